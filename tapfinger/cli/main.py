"""The `tapfinger` command. Each sub-command lives in `tapfinger/cli/<name>.py` and
exposes `register(subparsers)`; heavy imports (torch, plotting) stay inside the commands' run
functions so that `tapfinger --help` is fast."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

# Sub-command modules, in the order `tapfinger --help` lists them.
COMMANDS = ["scenarios", "demo", "evaluate", "train", "export", "profile", "import_trace"]
# Exit code after SIGTERM: 128 + 15, what a shell reports for a process SIGTERM ended, so a
# supervisor or script can tell it from Ctrl-C (130) and from an error (2).
SIGTERM_EXIT = 128 + int(signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tapfinger",
        description="Schedule ML training tasks on edge clusters, and measure how well it is done.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tapfinger.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tapfinger.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


class _Termination:
    """Whether SIGTERM arrived while a command ran (`sigterm_as_interrupt`)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.received = False

    def handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            # A forked worker that has not yet reset SIGTERM in its initializer: end the way the
            # default action does (quietly), not with a KeyboardInterrupt traceback.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.received:
            return  # already stopping: a second SIGTERM must not cut the clean-up short
        self.received = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in this process while the block runs, so `kill PID` (or
    a supervisor's stop) takes the commands' Ctrl-C path: worker pools are terminated, finished
    work is kept, one line is printed (`main`: "terminated: ...", exit code 143). Forked workers
    must not inherit this: the pool initializers (tapfinger/evaluation/harness.py,
    agents/learned/workers.py) install their own quiet exit, and a worker SIGTERMed before its
    initializer ran ends as the default action would (`_Termination.handle`). A second SIGTERM
    while the command stops is ignored; SIGKILL still ends it at once. Yields the
    `_Termination` (`.received`)."""
    state = _Termination()
    try:
        before = signal.signal(signal.SIGTERM, state.handle)
    except ValueError:  # not the main thread: signals are delivered to the main thread only
        before = None
    try:
        yield state
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A command that parses its own arguments (`train`: tyro, from its config dataclass) sets
    # `passthrough` and gets what argparse did not consume as `args.argv`.
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    stop = None
    try:
        with sigterm_as_interrupt() as stop:
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: one line, no traceback. A command that kept finished work
        # re-raises KeyboardInterrupt("what was saved, how to resume") and that is the line printed.
        said = f": {exc.args[0]}" if exc.args else ""
        if stop is not None and stop.received:
            print(f"tapfinger {args.command}: terminated{said}", file=sys.stderr)
            return SIGTERM_EXIT
        print(f"tapfinger {args.command}: interrupted{said}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User errors (bad scenario, trace, checkpoint, flags) are reported without a traceback.
        print(f"tapfinger {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
