"""Connecting to Ray for `--backend ray` (evaluation: tapfinger/evaluation/ray_backend.py; training:
agents/learned/ray_workers.py): Ray imported only when asked for, with an error that says how to
install it; a cluster address checked before Ray waits on it; a Ray started here kept small.

Torch-free and Ray-free at import time (like worker_signals.py): a heuristic evaluation imports it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

INSTALL_FIX = ("Fix: install the extra with pip install '.[ray]' (in the tapfinger checkout; or "
               "pip install ray==2.60.0), or run with --backend local")
CONNECT_TIMEOUT_S = 10.0  # how long a --ray-address is given to answer
# Object store of a Ray started here: what travels is a scenario, policy names and seeds, the
# network's weights (well under a MB at the default size) and episodes' results, so a small store
# suffices and leaves the machine's memory to the episodes.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


class RayBackendError(RuntimeError):
    """A problem of the Ray backend (the CLI prints it as one line: what went wrong, the fix)."""


def import_ray():
    """The `ray` module, or a RayBackendError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayBackendError(f"--backend ray needs the Ray package, which is not installed ({exc}). "
                              f"{INSTALL_FIX}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayBackendError(f"--ray-address {address!r} is not HOST:PORT. Fix: pass the address `ray start "
                              f"--head` printed, e.g. --ray-address 10.0.0.5:6379 (or ray://HOST:10001, or auto)")
    return host.strip("[]"), int(port)


def check_answers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a RayBackendError naming `address` unless something accepts connections there within
    `timeout_s` (before `ray.init`, which would otherwise wait far longer on a dead address)."""
    if address == "auto":  # Ray looks up the cluster started on this machine itself
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise RayBackendError(
            f"--ray-address {address}: nothing answered at {host}:{port} within {timeout_s:g} s "
            f"({exc.strerror or exc}). Fix: start the cluster's head there (ray start --head --port {port}), "
            f"pass the address `ray status` shows on the head, or drop --ray-address to start Ray on this "
            f"machine") from None


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator:
    """Ray, connected for the duration: to the cluster at `address`, or a Ray started here with
    `num_cpus` CPUs and a small object store. A Ray the caller already initialised is used as it
    is and left running (a test's, a notebook's); one connected here is shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_answers(address, timeout_s)
        kwargs: dict = {"address": address}
    else:
        kwargs = {"num_cpus": num_cpus, "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                  "include_dashboard": False}
    try:
        ray.init(**kwargs, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise RayBackendError(f"--ray-address {address}: Ray could not connect ({exc}). Fix: check that the "
                              f"address is the head's (ray status on the head), and that this machine runs "
                              f"the same Ray and Python versions") from None
    try:
        yield ray
    finally:
        ray.shutdown()
