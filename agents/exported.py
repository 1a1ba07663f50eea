"""Acting with an exported TapFinger policy (`tapfinger export`), outside the training code.

An exported file holds the network as a program with a plain-tensor interface (see
`INPUT_NAMES` / `OUTPUT_NAMES` and docs/export.md): the padded graph arrays of one round and the
masks of the agents that decide go in, greedy (argmax) actions and the task logits come out.
This module runs it with onnxruntime (`onnx:FILE`, imports numpy and onnxruntime only: neither
torch nor torch_geometric) or with `torch.export.load` (`pt2:FILE`, imports torch but not
torch_geometric), and reproduces the numpy side of `agents.learned.policy.Planner` around it:
the liveness rule, multi-task sequences with updated masks, and Bayes conflict resolution.

It must stay importable without torch: the interface constants and the metadata checks live
here, and `agents/learned/export.py` (the writer, which needs torch) imports them from here.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agents.base import Policy
from envs.actions import RoundActions
from agents.learned.conflicts import fit_count, resolve  # numpy only
from agents.learned.masks import MASK_KEYS, step_still_valid, update_masks  # numpy only
from envs.graph import feature_scales, graph_arrays
from tapfinger import __version__
from tapfinger.sim.tables import static_tables
from tapfinger.sim.scenario import FINGERPRINT_COVERS, Scenario, scenario_fingerprint

FORMAT = "tapfinger-exported-policy-1"
METADATA_KEY = "tapfinger"  # ONNX metadata_props key, and the name of the .pt2 extra file (+ ".json")
PT2_EXTRA_FILE = "tapfinger.json"

# The program's interface, in positional order (shapes: N clusters, NT nodes in all, P pending
# tasks, M running tasks, EV visibility edges, EP placement edges, S deciding agents, W window
# places, NN node slots per cluster, R resources).
INPUT_NAMES: tuple[str, ...] = (
    "cluster_x",  # [N, 2R+3] float32
    "node_x",  # [NT, 2R] float32, rows in global node order
    "pending_x",  # [P, K+R+4] float32
    "running_x",  # [M, K+R+2] float32
    "node_cluster",  # [NT] int64: cluster of each node row
    "visible_edge",  # [2, EV] int64: (pending row, cluster)
    "placed_edge",  # [2, EP] int64: (running row, node row)
    "window_row",  # [N, W] int64: pending row of each window place, -1 = empty
    "node_row",  # [N, NN] int64: node row of each node slot, -1 = padding
    "agent",  # [S] int64: clusters that decide
    "task_mask",  # [S, W+1] bool: index 0 = do nothing, i = window place i-1
    "node_mask",  # [S, W, NN] bool
    "alloc_low",  # [S, W, R] int64
    "alloc_high",  # [S, NN, R] int64
)
OUTPUT_NAMES: tuple[str, ...] = (
    "place",  # [S] int64: window place, -1 = do nothing
    "node",  # [S] int64: local node index
    "alloc",  # [S, R] int64
    "task_logits",  # [S, W+1] float32, masked entries = -1e9
    "task_prob",  # [S] float32: probability of the chosen task choice (Bayes conflict posterior)
)
ACTING_KEYS = ("multi_task", "max_sequence", "bayes", "pointer")


class ExportedPolicyError(ValueError):
    """An exported policy file cannot be used: missing, corrupted, or made for something else."""


# --------------------------------------------------------------------------- metadata helpers
def feature_layout(scenario: Scenario) -> dict[str, list[str]]:
    """Names of the feature columns `envs.graph.graph_arrays` builds, per vertex type."""
    res = list(scenario.resources)
    types = [t.name for t in scenario.task_types]
    return {
        "cluster": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res]
                   + ["running_tasks/M", "window_tasks/window", "queue_len/window"],
        "node": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res],
        "pending": [f"type={t}" for t in types] + [f"minimum_{r}/grid_max" for r in res]
                   + ["log1p(wait)", "work", "visible_clusters/N", "1/(1+deadline_left) or 0"],
        "running": [f"type={t}" for t in types] + [f"alloc_{r}/grid_max" for r in res]
                   + ["progress", "log1p(age)"],
    }


def expected_layout(scenario: Scenario) -> dict:
    return {"columns": feature_layout(scenario),
            "scales": [float(s) for s in feature_scales(scenario)],
            "grid_max": [int(g) for g in scenario.grid_max],
            "window": int(scenario.window_size),
            "max_nodes": int(max(len(c.nodes) for c in scenario.clusters)),
            "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES)}


def check_metadata(meta: dict | None, path: Path, scenario: Scenario, kind: str) -> dict:
    """Refuse (with the fix) a file that is not ours, or was exported for another scenario."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportedPolicyError(
            f"{path} is a valid {kind} file but not a TapFinger exported policy (no '{METADATA_KEY}' metadata "
            f"of format {FORMAT}). Fix: write it with `tapfinger export --checkpoint CKPT --format {kind} "
            f"--out {path}`.")
    if meta.get("scenario_fingerprint") != scenario_fingerprint(scenario):
        raise ExportedPolicyError(
            f"{path} was exported for scenario '{meta.get('scenario')}', which differs from this "
            f"'{scenario.name}' in one of: {FINGERPRINT_COVERS}. Fix: evaluate it with --scenario "
            f"{meta.get('scenario')}, or export a checkpoint trained on '{scenario.name}'.")
    layout = meta.get("feature_layout", {})
    want = expected_layout(scenario)
    if layout.get("inputs") != want["inputs"] or layout.get("outputs") != want["outputs"]:
        raise ExportedPolicyError(
            f"{path} has another program interface (inputs {layout.get('inputs')}); it was written by "
            f"tapfinger {meta.get('tapfinger_version')}, this is {__version__}. Fix: re-export the checkpoint "
            f"with this version (`tapfinger export`).")
    if layout.get("columns") != want["columns"] or layout.get("scales") != want["scales"]:
        raise ExportedPolicyError(
            f"{path} expects other graph features than this version builds (feature layout differs). Fix: "
            f"re-export the checkpoint with tapfinger {__version__}.")
    return meta


# --------------------------------------------------------------------------- runtimes
class Runner(Protocol):
    metadata: dict

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in OUTPUT_NAMES order."""


def _missing(path: Path, kind: str) -> ExportedPolicyError:
    return ExportedPolicyError(f"exported policy {path} does not exist. Fix: write it with `tapfinger export "
                               f"--checkpoint CKPT --format {kind} --out {path}`, or give the right path.")


def _unreadable(path: Path, kind: str, exc: BaseException) -> ExportedPolicyError:
    reason = " ".join(str(exc).split())[:200]
    return ExportedPolicyError(
        f"exported policy {path} cannot be read as a {kind} program ({type(exc).__name__}: {reason}); it is "
        f"corrupted, truncated or not a {kind} file. Fix: export it again with `tapfinger export --format {kind}`.")


class OnnxRunner:
    """onnxruntime session, one intra-op thread by default (evaluation workers are the parallelism)."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        if not path.is_file():
            raise _missing(path, "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # shape-inference warnings on dynamic dims are noise here
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise _unreadable(path, "onnx", exc) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = _parse_json(raw)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Feed what the session declares: an exporter may drop inputs the graph never reads.
        return self.session.run(list(OUTPUT_NAMES), {k: feeds[k] for k in self.input_names})


class Pt2Runner:
    """A `torch.export` program (.pt2) run eagerly by torch; torch_geometric is not needed."""

    def __init__(self, path: Path, threads: int | None = None):
        import torch

        if not path.is_file():
            raise _missing(path, "pt2")
        if not zipfile.is_zipfile(path):  # torch.export.save writes a zip archive
            raise _unreadable(path, "pt2", ValueError("not a zip archive"))
        extra = {PT2_EXTRA_FILE: ""}
        try:
            # from a buffer: torch.export.load wants file names ending in .pt2, ours need not
            program = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra)
        except Exception as exc:  # truncated archives, foreign zips, version skew
            raise _unreadable(path, "pt2", exc) from None
        self.metadata = _parse_json(extra[PT2_EXTRA_FILE] or None)
        if threads is not None:
            torch.set_num_threads(threads)
        self.module = program.module()
        self.torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES))
        return [o.numpy() for o in out]


def _parse_json(raw: str | bytes | None) -> dict | None:
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def open_runner(path: str | Path, kind: str, scenario: Scenario, threads: int | None = None) -> Runner:
    """Open an exported program and check that it fits `scenario`. `threads`: onnxruntime's intra-op
    threads (default 1: evaluation workers are the parallelism); for pt2, torch.set_num_threads if
    given (torch's setting is process-wide, so it is left alone by default)."""
    path = Path(path)
    if kind == "onnx":
        runner: Runner = OnnxRunner(path, threads=threads or 1)
    elif kind == "pt2":
        runner = Pt2Runner(path, threads=threads)
    else:
        raise ExportedPolicyError(f"unknown exported format {kind!r}. Fix: use onnx:FILE or pt2:FILE.")
    check_metadata(runner.metadata, path, scenario, kind)
    return runner


# --------------------------------------------------------------------------- feeds
def graph_feeds(obs: dict[str, np.ndarray], scenario: Scenario) -> dict[str, np.ndarray]:
    """The graph part of the inputs (same arrays `agents.learned.batch.collate` turns into tensors)."""
    g = graph_arrays(obs, scenario)
    return {
        "cluster_x": g["cluster_x"], "node_x": g["node_x"], "pending_x": g["pending_x"], "running_x": g["running_x"],
        "node_cluster": g["node_cluster"], "visible_edge": np.ascontiguousarray(g["visible_edge"]),
        "placed_edge": np.ascontiguousarray(g["placed_edge"]), "window_row": g["window_row"],
        # graph_arrays orders node rows by global node id, so a node slot's row is its id
        "node_row": np.where(obs["node_id"] >= 0, obs["node_id"], -1).astype(np.int64),
    }


def decision_feeds(agents: list[int] | np.ndarray, masks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {"agent": np.asarray(agents, dtype=np.int64),
            "task_mask": np.stack([m["task_mask"] for m in masks]).astype(bool),
            "node_mask": np.stack([m["node_mask"] for m in masks]).astype(bool),
            "alloc_low": np.stack([m["alloc_low"] for m in masks]).astype(np.int64),
            "alloc_high": np.stack([m["alloc_high"] for m in masks]).astype(np.int64)}


# --------------------------------------------------------------------------- the policy
@dataclass
class _Step:
    place: int
    node: int
    alloc: np.ndarray
    task_id: int
    prob: float


class ExportedPolicy(Policy):
    """Greedy TapFinger policy from an exported file: `onnx:FILE` or `pt2:FILE` in the registry.

    Acting options (multi-task, Bayes) come from the file's metadata; `bayes` and `max_sequence`
    may be overridden. The pointer ablation is part of the exported program and cannot."""

    name = "exported"
    learned = True

    def __init__(self, scenario: Scenario, seed: int = 0, path: str | Path | None = None, kind: str = "onnx",
                 threads: int | None = None, **overrides):
        super().__init__(scenario, seed)
        if path is None:
            raise ExportedPolicyError("an exported policy needs a file: use onnx:FILE or pt2:FILE")
        self.name = f"{kind}:{path}"
        self.runner = open_runner(path, kind, scenario, threads=threads)
        acting = dict(self.runner.metadata.get("acting", {}))
        for k, v in overrides.items():
            if k not in ("multi_task", "max_sequence", "bayes"):
                raise ExportedPolicyError(f"exported policy option {k!r} is not supported. Fix: use multi_task, "
                                          f"max_sequence or bayes (pointer is fixed at export).")
            acting[k] = v
        self.multi_task = bool(acting.get("multi_task", False))
        self.max_sequence = int(acting.get("max_sequence", 4))
        self.bayes = bool(acting.get("bayes", True))
        self.static = static_tables(scenario)
        self.grid = self.static.grid_max
        self.queue: list[list[_Step]] = [[] for _ in range(scenario.num_clusters)]
        self.slot = -1

    @property
    def metadata(self) -> dict:
        return self.runner.metadata

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.queue = [[] for _ in range(self.scenario.num_clusters)]
        self.slot = -1

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N = obs["task_mask"].shape[0]
        R = obs["alloc_low"].shape[2]
        slot = int(obs["slot"][0, 0])
        if slot != self.slot:  # plans are made for one slot
            self.queue = [[] for _ in range(N)]
            self.slot = slot
        starts: list[_Step | None] = [None] * N
        fresh = [i for i in range(N) if not self.queue[i] and obs["task_mask"][i, 1:].any()]
        for i in range(N):
            while self.queue[i] and starts[i] is None:
                step = self.queue[i].pop(0)
                if step_still_valid(obs, i, step.place, step.node, step.alloc, step.task_id):
                    starts[i] = step
        if fresh:
            for i, steps in zip(fresh, self._sequences(obs, fresh)):
                real = [s for s in steps if s.place >= 0]
                if real:
                    starts[i] = real[0]
                    self.queue[i] = real[1:]
        task_ids = np.array([s.task_id if s is not None else -1 for s in starts])
        keep = task_ids >= 0
        taken = task_ids[keep]
        if np.unique(taken).size < taken.size:  # a conflict: Bayes resolution (fits only matter there)
            probs = np.array([s.prob if s is not None else 0.0 for s in starts])
            fits = np.zeros(N)
            for i, s in enumerate(starts):
                if s is not None:
                    tmin = self.static.type_min[obs["window_type"][i, s.place]]
                    fits[i] = fit_count(obs["node_free"][i], obs["node_id"][i] >= 0, tmin)
            keep = resolve(task_ids, probs, fits, bayes=self.bayes)
        actions = RoundActions.nothing(N, R)
        for i, s in enumerate(starts):
            if s is not None and keep[i]:
                actions.task[i], actions.node[i], actions.alloc[i] = s.place, s.node, s.alloc
        return actions

    def _sequences(self, obs: dict, fresh: list[int]) -> list[list[_Step]]:
        graph = graph_feeds(obs, self.scenario)
        n_steps = self.max_sequence if self.multi_task else 1
        rows = np.asarray(fresh, dtype=np.int64)
        idle = ~(obs["running_id"][rows] >= 0).any(axis=1)
        # First step for all deciding agents at once (fancy indexing copies, so edits stay local)
        first = {"agent": rows, "task_mask": obs["task_mask"][rows].astype(bool),
                 "node_mask": obs["node_mask"][rows].astype(bool),
                 "alloc_low": obs["alloc_low"][rows].astype(np.int64, copy=False),
                 "alloc_high": obs["alloc_high"][rows].astype(np.int64, copy=False)}
        # Liveness: an idle cluster with a startable task may not pass. Waiting there never frees
        # anything, and a greedy policy could otherwise stall forever.
        first["task_mask"][idle, 0] = False
        masks: list[dict[str, np.ndarray]] = []
        if n_steps > 1:  # per-agent masks, updated after each choice of a sequence
            masks = [{k: obs[k][i].copy() for k in MASK_KEYS} for i in fresh]
            for j in np.flatnonzero(idle):
                masks[j]["task_mask"][0] = 0
            free = [obs["node_free"][i].copy() for i in fresh]
            occupied = [obs["window_id"][i] >= 0 for i in fresh]
            room = [int(self.static.max_running[i] - (obs["running_id"][i] >= 0).sum()) for i in fresh]
        steps: list[list[_Step]] = [[] for _ in fresh]
        active = np.ones(len(fresh), dtype=bool)
        for k_step in range(n_steps):
            idx = np.flatnonzero(active)
            if not idx.size:
                break
            # Later steps of a sequence run the whole program again with the updated masks: the
            # encoder's output does not depend on the masks, so the result equals the eager reuse.
            feeds = first if k_step == 0 else decision_feeds(rows[idx], [masks[j] for j in idx])
            place, node, alloc, _, prob = self.runner.run({**graph, **feeds})
            for k, j in enumerate(idx):
                i = fresh[j]
                p = int(place[k])
                tid = int(obs["window_id"][i, p]) if p >= 0 else -1
                steps[j].append(_Step(p, int(node[k]), alloc[k].astype(np.int64), tid, float(prob[k])))
                if p < 0:
                    active[j] = False
                    continue
                if n_steps == 1:
                    continue  # single-task: no mask update needed
                room[j] -= 1
                masks[j] = update_masks(masks[j], free[j], p, int(node[k]), alloc[k], self.grid, occupied[j], room[j])
                if not masks[j]["task_mask"][1:].any():
                    active[j] = False  # nothing left to choose: the sequence ends without a "none" step
        return steps


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported file without a scenario check (for `tapfinger export --show`)."""
    path = Path(path)
    kind = "pt2" if zipfile.is_zipfile(path) else "onnx"
    runner = OnnxRunner(path) if kind == "onnx" else Pt2Runner(path)
    if runner.metadata is None:
        raise ExportedPolicyError(f"{path} holds no TapFinger metadata. Fix: export it with `tapfinger export`.")
    return runner.metadata
