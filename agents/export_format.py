"""The exported program's interface: what the writer (`agents.learned.export`, torch) and the
runtime (`agents.exported`, numpy + onnxruntime) agree on. Torch-free.

- the file format and where its metadata is stored (`FORMAT`, `METADATA_KEY`, `PT2_EXTRA_FILE`);
- the program's inputs and outputs, in positional order (`INPUT_NAMES`, `OUTPUT_NAMES`; a
  network with greedy hints takes `HINT_INPUTS` too: `input_names`; a declining network outputs
  `DECLINE_OUTPUTS` too: `output_names`), and how they are built from the batched observations
  (`round_feeds`, `graph_feeds`, `decision_feeds`; a network with `node_faults` has two more
  columns in `node_x` and in `cluster_x`: `sees_node_faults`);
- the metadata check a file must pass to serve a scenario (`expected_layout`, `check_metadata`).
See docs/export.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.learned.acting import HINT_KEYS
from envs.graph import feature_layout, feature_scales, graph_arrays
from tapfinger import __version__
from tapfinger.sim.scenario import (FINGERPRINT_COVERS, Scenario, ScenarioError, builtin_names, fingerprint_parts,
                                    load_scenario, scenario_fingerprint)

FORMAT = "tapfinger-exported-policy-1"
METADATA_KEY = "tapfinger"  # ONNX metadata_props key, and the name of the .pt2 extra file (+ ".json")
PT2_EXTRA_FILE = "tapfinger.json"

# The program's interface, in positional order (shapes: N clusters, NT nodes in all, P pending
# tasks, M running tasks, EV visibility edges, EP placement edges, S deciding agents, W window
# places, NN node slots per cluster, R resources).
INPUT_NAMES: tuple[str, ...] = (
    "cluster_x",  # [N, 2R+3] float32 (node_faults: [N, 2R+5], envs.graph.NODE_FAULT_COLUMNS last)
    "node_x",  # [NT, 2R] float32, rows in global node order (node_faults: [NT, 2R+2])
    "pending_x",  # [P, K+R+4] float32
    "running_x",  # [M, K+R+2] float32
    "node_cluster",  # [NT] int64: cluster of each node row
    "visible_edge",  # [2, EV] int64: (pending row, cluster)
    "placed_edge",  # [2, EP] int64: (running row, node row)
    "window_row",  # [N, W] int64: pending row of each window place, -1 = empty
    "node_row",  # [N, NN] int64: node row of each node slot, -1 = padding
    "agent",  # [S] int64: clusters that decide
    "task_mask",  # [S, W+1] bool: index 0 = do nothing, i = window place i-1 (declining: [S, 2W+1])
    "node_mask",  # [S, W, NN] bool
    "alloc_low",  # [S, W, R] int64
    "alloc_high",  # [S, NN, R] int64
)
OUTPUT_NAMES: tuple[str, ...] = (
    "place",  # [S] int64: window place, -1 = do nothing
    "node",  # [S] int64: local node index
    "alloc",  # [S, R] int64
    "task_logits",  # [S, W+1] float32, masked entries = -1e9 (declining: [S, 2W+1])
    "task_prob",  # [S] float32: probability of the chosen task choice (Bayes conflict posterior)
)
# After those, a program of a network with greedy hints (`ModelConfig.greedy_hint`) takes greedy's
# proposal for every cluster, which the runtime's round loop computes with the eager policy's own
# `GreedyPolicy` (`agents.learned.acting.RoundPlanner.hints`); the program adds them to its logits.
# They are: hint_task [N, W+1] float32, the one-hot of greedy's task choice (0 = do nothing);
# hint_node [N] int64, the local node of greedy's start (-1 = none); hint_alloc [N, R] int64, its
# amounts (-1 = none). Their names and layout are the round arrays' (`acting.HINT_KEYS`).
HINT_INPUTS: tuple[str, ...] = HINT_KEYS
# After those outputs, a program of a declining network (`ModelConfig.decline`) outputs "decline"
# [S] int64: the window place it declines, -1 = none (then `place` is -1: a decline starts
# nothing). Its task_mask input and task_logits output are [S, 2W+1]: the task choices, then
# "decline place i" at W+1+i (the decision masks of `agents.learned.masks.decision_masks`).
DECLINE_OUTPUTS: tuple[str, ...] = ("decline",)
ACTING_KEYS = ("multi_task", "max_sequence", "bayes", "pointer")
GRAPH_INPUTS = INPUT_NAMES[:9]  # one round's graph; the rest: the deciding agents and their masks


def input_names(greedy_hint: bool = False) -> tuple[str, ...]:
    """The program's inputs in positional order: `INPUT_NAMES`, then `HINT_INPUTS` with greedy hints."""
    return INPUT_NAMES + HINT_INPUTS if greedy_hint else INPUT_NAMES


def output_names(decline: bool = False) -> tuple[str, ...]:
    """The program's outputs in order: `OUTPUT_NAMES`, then `DECLINE_OUTPUTS` for a declining network."""
    return OUTPUT_NAMES + DECLINE_OUTPUTS if decline else OUTPUT_NAMES


def declines(meta: dict) -> bool:
    """Whether the program of this metadata may decline tasks (its outputs end with DECLINE_OUTPUTS)."""
    layout = meta.get("feature_layout") if isinstance(meta, dict) else None
    return isinstance(layout, dict) and layout.get("outputs") == list(output_names(True))


def hint_policy(meta: dict) -> str:
    """The heuristic whose proposals a hinted program takes (its model_config's; older files: greedy)."""
    cfg = meta.get("model_config") if isinstance(meta, dict) else None
    name = cfg.get("hint_policy", "greedy") if isinstance(cfg, dict) else "greedy"
    return name if isinstance(name, str) else "greedy"


def sees_node_faults(meta: dict) -> bool:
    """Whether the program of this metadata reads the node-health feature columns (its model_config's
    `node_faults`; older files: no)."""
    cfg = meta.get("model_config") if isinstance(meta, dict) else None
    return isinstance(cfg, dict) and cfg.get("node_faults") is True


def takes_hints(meta: dict) -> bool:
    """Whether the program of this metadata takes greedy's proposals (its inputs end with HINT_INPUTS)."""
    layout = meta.get("feature_layout") if isinstance(meta, dict) else None
    return isinstance(layout, dict) and layout.get("inputs") == list(input_names(True))


class ExportedPolicyError(ValueError):
    """An exported policy file cannot be used: missing, corrupted, or made for something else."""


class ExportError(ExportedPolicyError):
    """Exporting failed, or the exported program does not act like the eager model."""


# --------------------------------------------------------------------------- feeds
def round_feeds(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph inputs from a round's arrays (`agents.learned.acting.round_arrays`: `graph_arrays`
    plus `node_id`), the same arrays `agents.learned.batch.collate` turns into tensors."""
    out = {k: np.ascontiguousarray(arrays[k]) for k in GRAPH_INPUTS if k != "node_row"}
    # graph_arrays orders node rows by global node id, so a node slot's row is its id
    out["node_row"] = np.where(arrays["node_id"] >= 0, arrays["node_id"], -1).astype(np.int64)
    out.update({k: np.ascontiguousarray(arrays[k]) for k in HINT_INPUTS if k in arrays})  # greedy hints, if made
    return out


def graph_feeds(obs: dict[str, np.ndarray], scenario: Scenario, node_faults: bool = False) -> dict[str, np.ndarray]:
    """The graph inputs from the batched observations (`node_faults`: with the node-health columns)."""
    return round_feeds({**graph_arrays(obs, scenario, node_faults), "node_id": obs["node_id"]})


def stacked_decision_feeds(agents: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decision inputs: the deciding agents and their masks (masks[k] is [S, ...])."""
    return {"agent": np.asarray(agents, dtype=np.int64),
            "task_mask": masks["task_mask"].astype(bool, copy=False),
            "node_mask": masks["node_mask"].astype(bool, copy=False),
            "alloc_low": masks["alloc_low"].astype(np.int64, copy=False),
            "alloc_high": masks["alloc_high"].astype(np.int64, copy=False)}


def decision_feeds(agents: list[int] | np.ndarray, masks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`stacked_decision_feeds` from one mask dict per agent."""
    return stacked_decision_feeds(agents, {k: np.stack([m[k] for m in masks]) for k in masks[0]})


# --------------------------------------------------------------------------- metadata
def expected_layout(scenario: Scenario, greedy_hint: bool = False, decline: bool = False,
                    node_faults: bool = False) -> dict:
    """The `feature_layout` entry of the metadata: what the program expects to be fed (and outputs)."""
    return {"columns": feature_layout(scenario, node_faults),
            "scales": [float(s) for s in feature_scales(scenario)],
            "grid_max": [int(g) for g in scenario.grid_max],
            "window": int(scenario.window_size),
            "max_nodes": int(max(len(c.nodes) for c in scenario.clusters)),
            "inputs": list(input_names(greedy_hint)), "outputs": list(output_names(decline))}


def check_metadata(meta: dict | None, path: Path, scenario: Scenario, kind: str) -> dict:
    """Refuse (with the fix) a file that is not ours, or was exported for another scenario."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportedPolicyError(
            f"{path} is a valid {kind} file but not a TapFinger exported policy (no '{METADATA_KEY}' metadata "
            f"of format {FORMAT}). Fix: write it with `tapfinger export --checkpoint CKPT --format {kind} "
            f"--out {path}`.")
    if declines(meta) and not scenario.allow_decline:  # before the fingerprint: the clearer reason
        raise ExportedPolicyError(
            f"{path} declines tasks (admission control: it was exported from a policy trained with declines), but "
            f"scenario '{scenario.name}' does not allow declining (allow_decline = false). Fix: evaluate it on "
            f"the scenario it was exported for ('{meta.get('scenario')}', with allow_decline = true), or export a "
            f"policy trained with --decline off.")
    if meta.get("scenario_fingerprint") != scenario_fingerprint(scenario):
        raise ExportedPolicyError(
            f"{path} was exported for scenario '{meta.get('scenario')}', which differs from this "
            f"'{scenario.name}' in one of: {FINGERPRINT_COVERS}{fingerprint_difference(meta, scenario, 'file')}. "
            f"Fix: evaluate it with --scenario {meta.get('scenario')}, or export a checkpoint trained on "
            f"'{scenario.name}'.")
    layout = meta.get("feature_layout", {})
    # any of the interfaces is this version's
    want = expected_layout(scenario, takes_hints(meta), declines(meta), sees_node_faults(meta))
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


# --------------------------------------------------------------------------- what differs
def stored_parts(scenario: Scenario) -> dict[str, str]:
    """The fingerprint's parts as a checkpoint or exported file stores them (reprs: plain strings,
    which `torch.load(weights_only=True)` and JSON both read)."""
    return {k: repr(v) for k, v in fingerprint_parts(scenario).items()}


def _builtin_parts(name, fingerprint) -> dict[str, str] | None:
    """The parts of the built-in scenario of that name, if it is the one the file was made for
    (same fingerprint): how files that store no parts (the shipped checkpoints) are compared."""
    if not isinstance(name, str) or name not in builtin_names():
        return None
    try:
        builtin = load_scenario(name)
    except (ScenarioError, OSError):  # e.g. its shared data is not here
        return None
    return stored_parts(builtin) if scenario_fingerprint(builtin) == fingerprint else None


def _shape_differences(cfg, scenario: Scenario) -> list[tuple[str, object, object]]:
    """What the stored network configuration shows of its scenario, against `scenario`."""
    if not isinstance(cfg, dict):
        return []
    here = {"number of task types": len(scenario.task_types), "number of resources": scenario.num_resources,
            "grid": list(scenario.grid_max), "window": scenario.window_size,
            "most nodes in a cluster": max(len(c.nodes) for c in scenario.clusters)}
    keys = {"number of task types": "num_types", "number of resources": "num_resources", "grid": "grid_max",
            "window": "window", "most nodes in a cluster": "max_nodes"}
    return [(label, cfg[keys[label]], value) for label, value in here.items()
            if keys[label] in cfg and cfg[keys[label]] != value]


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_difference(stored: dict, scenario: Scenario, holder: str) -> str:
    """"; what differs: window (10 in the checkpoint, 5 here), ..." for a checkpoint payload or
    exported metadata whose fingerprint differs from `scenario`'s ("" when it cannot be told).
    From the parts the file stores, else from the built-in scenario it names, else from the
    network's shape (its model configuration)."""
    parts = stored.get("scenario_parts")
    if not isinstance(parts, dict):
        parts = _builtin_parts(stored.get("scenario"), stored.get("scenario_fingerprint"))
    if isinstance(parts, dict):
        here = stored_parts(scenario)
        diffs = [(k, parts[k], v) for k, v in here.items() if k in parts and parts[k] != v]
    else:
        diffs = _shape_differences(stored.get("model_config"), scenario)
    if not diffs:
        return ""
    return "; what differs: " + ", ".join(f"{k} ({_short(a)} in the {holder}, {_short(b)} here)" for k, a, b in diffs)
