"""Finished episodes of an unfinished evaluation, kept on disk so that Ctrl-C loses none of them and
rerunning the same command runs only the missing ones.

The cache is one append-only JSON-lines file in the output folder (`CACHE_NAME`): a header line,
then one line per finished episode, written by the main process with a single `write` on a file
opened for appending, so a record is either whole or (after a SIGKILL mid-write) a cut-off last
line, which `load` skips. A record is only used for the job whose key it carries: the key hashes
everything the episode depends on (the scenario and the files it reads, the policy name, its
options and the files they name, the seed, the package version), so a rerun with other flags or
edited files never reuses a stale episode. The evaluation removes the file once it has written
its results: the cache only ever holds an evaluation that has not finished.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tapfinger import __version__
from tapfinger.evaluation.metrics import EpisodeMetrics
from tapfinger.sim.scenario import Scenario

CACHE_NAME = "episodes.partial.jsonl"
CACHE_FORMAT = 1
HEADER = {"tapfinger_episode_cache": CACHE_FORMAT,
          "about": "episodes of an unfinished `tapfinger evaluate`; rerun the same command to finish it "
                   "(this file is removed when it completes)"}
_ARRAYS = ("jct", "in_system")  # int64 arrays, stored as lists


@functools.lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_digests(paths) -> dict[str, str]:
    """Content hash of every name in `paths` that is a file (a checkpoint, a profile, a trace):
    an episode depends on what the file holds, not only on its name."""
    out = {}
    for p in paths:
        if isinstance(p, (str, Path)) and str(p) and os.path.isfile(p):
            st = os.stat(p)
            out[str(p)] = _digest(str(p), st.st_mtime_ns, st.st_size)
    return out


def job_key(scenario: Scenario, name: str, seed: int, options: dict) -> str:
    """What one episode depends on, hashed: equal keys, equal episodes."""
    _, _, named_file = name.partition(":")  # onnx:FILE / pt2:FILE name their policy file
    files = [scenario.profile, scenario.arrivals.trace, named_file, *options.values()]
    spec = [CACHE_FORMAT, __version__, repr(scenario), name, repr(sorted(options.items())), int(seed),
            sorted(_file_digests(files).items())]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()


def _encode(m: EpisodeMetrics) -> dict:
    out = dataclasses.asdict(m)
    for k in _ARRAYS:
        out[k] = np.asarray(getattr(m, k)).tolist()
    return out


def _decode(d: dict) -> EpisodeMetrics:
    d = dict(d)
    for k in _ARRAYS:
        d[k] = np.asarray(d[k], dtype=np.int64)
    return EpisodeMetrics(**d)


class EpisodeCache:
    """The finished episodes of one output folder's evaluation (see the module docstring)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._prefix_checked = False

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def load_all(self) -> list[dict]:
        """Every whole episode record in the file (the header and cut-off lines left out)."""
        out = []
        for line in self._lines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill mid-write
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                out.append(rec)
        return out

    def load(self, keys: set[str]) -> dict[str, tuple[str, EpisodeMetrics, float]]:
        """(policy, metrics, bound) of each finished episode whose key is in `keys`."""
        out = {}
        for rec in self.load_all():
            if rec["key"] not in keys:
                continue
            try:
                out[rec["key"]] = (rec["policy"], _decode(rec["metrics"]), float(rec["bound"]))
            except (KeyError, TypeError, ValueError):
                continue  # a record of another format: the episode is run again
        return out

    def _prefix(self) -> str:
        """What the first append of this process writes before its record: the header for a new
        file, a line end after a cut-off last line (so the new record starts a line of its own)."""
        if self._prefix_checked:
            return ""
        self._prefix_checked = True
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return json.dumps(HEADER) + "\n"
                f.seek(-1, os.SEEK_END)
                return "" if f.read(1) == b"\n" else "\n"
        except FileNotFoundError:
            return json.dumps(HEADER) + "\n"

    def append(self, key: str, name: str, metrics: EpisodeMetrics, bound: float) -> None:
        """Add one finished episode, as one write to the end of the file."""
        self.write_record({"key": key, "policy": name, "seed": int(metrics.seed), "bound": bound,
                           "metrics": _encode(metrics)})

    def write_record(self, record: dict) -> None:
        """One JSON record as one write to the end of the file (the geo harness stores its own kind)."""
        data = memoryview((self._prefix() + json.dumps(record) + "\n").encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:  # a regular file takes it in one write; the loop is for the exception
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._prefix_checked = False
