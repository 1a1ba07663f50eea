"""The graph of one round: its layout (vertex types, edge types, feature columns) and its arrays.

Vertices: `cluster`, `node`, `pending` (window tasks, one vertex per task even when several
clusters see it: the agents' views are joined by `window_id`) and `running`.
Edges (with their reverses, prefixed `rev_`): node -in-> cluster, pending -visible_to-> cluster,
running -placed_on-> node.

This module is the one home of that layout: the model (`agents.learned.model`), the collate
(`agents.learned.batch`), the exporter and the exported-policy runtime all read it from here.
It is torch-free (`build_hetero_graph` imports torch only when called), so the ONNX runtime can
use it.

`step()` never calls this: models call it (or their own batched equivalent) on the arrays the
environment returns. Features are normalised by scenario constants so that one model serves
clusters of any size.

With `node_faults` (a network option, `ModelConfig.node_faults`; off in every network made before
issue 15, whose widths it keeps) the "resource detection" view of unreliable nodes joins the
features, as columns after the others: each node's `health` (observation `node_health`: 1 up, 0
failed or away) and `speed` (`node_speed`: its current speed factor, below 1 during a slowdown),
and each cluster's `up_share` (its nodes that are up, as a share of its nodes) and `mean_speed`
(the mean speed of its nodes that are up; 0 when none is). Policies see a fault only when it
happens (the observation's rule). On a scenario without `[faults]` they are all 1s, so a network
with the option runs there too, and one without it ignores them where faults happen.
"""

from __future__ import annotations

import numpy as np

from tapfinger.sim.scenario import Scenario

EdgeType = tuple[str, str, str]

VERTEX_TYPES: tuple[str, ...] = ("cluster", "node", "pending", "running")
# The forward edge types, each with the `graph_arrays` key of its [2, E] (source row, destination
# row) array; "node_cluster" is stored as the destination of each node row (the source is the row).
FORWARD_EDGES: tuple[tuple[EdgeType, str], ...] = (
    (("node", "in", "cluster"), "node_cluster"),
    (("pending", "visible_to", "cluster"), "visible_edge"),
    (("running", "placed_on", "node"), "placed_edge"),
)


def reverse(edge_type: EdgeType) -> EdgeType:
    src, rel, dst = edge_type
    return dst, f"rev_{rel}", src


# Every edge type, each forward type followed by its reverse. The order is the model's: HeteroConv
# sums the per-edge-type messages in this order (the exported encoder adds them in the same order).
EDGE_TYPES: tuple[EdgeType, ...] = tuple(e for fwd, _ in FORWARD_EDGES for e in (fwd, reverse(fwd)))


# The columns `node_faults` adds, after the others (so a network without them has a prefix of the layout).
NODE_FAULT_COLUMNS: dict[str, list[str]] = {
    "cluster": ["up_share (nodes up / nodes)", "mean_speed (of the nodes up; 0 if none)"],
    "node": ["health (1 up, 0 down)", "speed (current speed factor)"],
}


def feature_columns(resources: list[str] | tuple[str, ...], task_types: list[str] | tuple[str, ...],
                    node_faults: bool = False) -> dict[str, list[str]]:
    """Names of the feature columns `graph_arrays` builds, per vertex type, in column order
    (`node_faults`: with the node-health columns, `NODE_FAULT_COLUMNS`)."""
    res, types = list(resources), list(task_types)
    extra = NODE_FAULT_COLUMNS if node_faults else {}
    return {
        "cluster": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res]
                   + ["running_tasks/M", "window_tasks/window", "queue_len/window"] + extra.get("cluster", []),
        "node": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res] + extra.get("node", []),
        "pending": [f"type={t}" for t in types] + [f"minimum_{r}/grid_max" for r in res]
                   + ["log1p(wait)", "work", "visible_clusters/N", "1/(1+deadline_left) or 0"],
        "running": [f"type={t}" for t in types] + [f"alloc_{r}/grid_max" for r in res]
                   + ["progress", "log1p(age)"],
    }


def feature_layout(scenario: Scenario, node_faults: bool = False) -> dict[str, list[str]]:
    """`feature_columns` with the scenario's resource and task-type names."""
    return feature_columns(scenario.resources, [t.name for t in scenario.task_types], node_faults)


def feature_dims(num_types: int, num_resources: int, node_faults: bool = False) -> dict[str, int]:
    """Width of each vertex type's features (the model's input sizes)."""
    cols = feature_columns([f"r{i}" for i in range(num_resources)], [f"t{k}" for k in range(num_types)],
                           node_faults)
    return {k: len(v) for k, v in cols.items()}


def forward_edges(arrays: dict[str, np.ndarray]) -> dict[EdgeType, np.ndarray]:
    """The [2, E] index arrays of the forward edge types of one round's `graph_arrays`."""
    out = {}
    for et, key in FORWARD_EDGES:
        a = arrays[key]
        out[et] = np.stack([np.arange(len(a)), a]) if a.ndim == 1 else a
    return out


def feature_scales(scenario: Scenario) -> np.ndarray:
    """Per-resource normaliser: the largest node capacity of that resource (at least 1)."""
    caps = np.asarray([n for c in scenario.clusters for n in c.nodes], dtype=np.float64)
    return np.maximum(caps.max(axis=0), 1.0)


class _Constants:
    """What graph_arrays needs of a scenario, computed once per scenario object (graph_arrays runs
    every round that someone decides: its fixed numpy costs dominate, not its arithmetic)."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.K = len(scenario.task_types)
        self.R = scenario.num_resources
        self.inv_scale = 1.0 / feature_scales(scenario)
        self.inv_grid = 1.0 / np.asarray(scenario.grid_max, dtype=np.float64)
        self.eye = np.eye(self.K, dtype=np.float32)
        self.dims = feature_dims(self.K, self.R)  # the columns common to both layouts (pending, running)


_CONSTANTS: dict[int, _Constants] = {}


def _constants(scenario: Scenario) -> _Constants:
    c = _CONSTANTS.get(id(scenario))
    if c is None or c.scenario is not scenario:  # ids are reused after a scenario is freed
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        c = _CONSTANTS[id(scenario)] = _Constants(scenario)
    return c


def graph_arrays(obs: dict[str, np.ndarray], scenario: Scenario, node_faults: bool = False
                 ) -> dict[str, np.ndarray]:
    """The numpy content of the graph (features, edge lists, index maps); torch-free. `node_faults`:
    with the node-health columns (`NODE_FAULT_COLUMNS`)."""
    N, W = obs["window_id"].shape
    c = _constants(scenario)
    K, R = c.K, c.R
    M = obs["running_id"].shape[1]

    free = obs["node_free"]
    cap = obs["node_capacity"]
    cluster_x = np.empty((N, 2 * R + 3 + 2 * node_faults), dtype=np.float32)
    cluster_x[:, :R] = cap.sum(axis=1) * c.inv_scale
    cluster_x[:, R:2 * R] = free.sum(axis=1) * c.inv_scale
    cluster_x[:, 2 * R] = (obs["running_id"] >= 0).sum(axis=1) / max(M, 1)
    cluster_x[:, 2 * R + 1] = (obs["window_id"] >= 0).sum(axis=1) / W
    cluster_x[:, 2 * R + 2] = obs["queue_len"][:, 0] / W

    node_valid = obs["node_id"] >= 0
    node_global = obs["node_id"][node_valid]
    order = np.argsort(node_global)
    node_cluster = np.nonzero(node_valid)[0][order]
    node_x = np.empty((len(order), 2 * R + 2 * node_faults), dtype=np.float32)
    node_x[:, :R] = cap[node_valid][order] * c.inv_scale
    node_x[:, R:2 * R] = free[node_valid][order] * c.inv_scale
    if node_faults:
        _node_fault_features(obs, node_valid, order, cluster_x[:, 2 * R + 3:], node_x[:, 2 * R:])
    # local (cluster, slot) -> row in node_x
    node_row = np.full(node_valid.shape, -1, dtype=np.int64)
    node_row[node_valid] = np.argsort(order)

    wid = obs["window_id"]
    occupied = wid >= 0
    task_ids, first = np.unique(wid[occupied], return_index=True)
    flat = np.flatnonzero(occupied.ravel())[first]  # first occurrence of each task
    pending_x = np.zeros((len(task_ids), c.dims["pending"]), dtype=np.float32)
    if len(task_ids):
        pending_x[:, :K] = c.eye[obs["window_type"].ravel()[flat]]
        pending_x[:, K:K + R] = obs["alloc_low"].reshape(N * W, -1)[flat] * c.inv_grid
        pending_x[:, K + R] = np.log1p(obs["window_wait"].ravel()[flat])
        pending_x[:, K + R + 1] = obs["window_work"].ravel()[flat]
        pending_x[:, K + R + 2] = obs["window_visible"].ravel()[flat] / N
        dl = obs["window_deadline"].ravel()[flat]
        pending_x[:, K + R + 3] = np.where(dl >= 0, 1.0 / (1.0 + np.maximum(dl, 0)), 0.0)
    window_row = np.full((N, W), -1, dtype=np.int64)
    window_row[occupied] = np.searchsorted(task_ids, wid[occupied])
    vis_agent, vis_place = np.nonzero(occupied)

    rid = obs["running_id"]
    live = rid >= 0
    r_agent, r_place = np.nonzero(live)
    running_x = np.zeros((len(r_agent), c.dims["running"]), dtype=np.float32)
    if len(r_agent):
        running_x[:, :K] = c.eye[obs["running_type"][live]]
        running_x[:, K:K + R] = obs["running_alloc"][live] * c.inv_grid
        running_x[:, K + R] = obs["running_progress"][live]
        running_x[:, K + R + 1] = np.log1p(obs["running_age"][live])
    running_node = node_row[r_agent, obs["running_node"][live]]

    return {
        "cluster_x": cluster_x,
        "node_x": node_x,
        "node_cluster": node_cluster.astype(np.int64),
        "pending_x": pending_x,
        "pending_task_id": task_ids.astype(np.int64),
        "visible_edge": np.stack([window_row[vis_agent, vis_place], vis_agent]).astype(np.int64),
        "window_row": window_row,
        "running_x": running_x,
        "running_task_id": rid[live].astype(np.int64),
        "placed_edge": np.stack([np.arange(len(running_node)), running_node]).astype(np.int64),
    }


def _node_fault_features(obs: dict[str, np.ndarray], node_valid: np.ndarray, order: np.ndarray,
                         cluster_out: np.ndarray, node_out: np.ndarray) -> None:
    """Fill the `NODE_FAULT_COLUMNS` of the clusters ([N, 2]) and of the node rows ([NT, 2])."""
    up = (obs["node_health"] > 0) & node_valid
    speed = np.where(up, obs["node_speed"], 0.0)
    node_out[:, 0] = up[node_valid][order]
    node_out[:, 1] = obs["node_speed"][node_valid][order]
    n_up = up.sum(axis=1)
    cluster_out[:, 0] = n_up / np.maximum(node_valid.sum(axis=1), 1)
    cluster_out[:, 1] = speed.sum(axis=1) / np.maximum(n_up, 1)


def build_hetero_graph(obs: dict[str, np.ndarray], scenario: Scenario, node_faults: bool = False):
    """A `HeteroData` graph of the joined agent views (batched observations, one row per agent)."""
    import torch
    from torch_geometric.data import HeteroData

    a = graph_arrays(obs, scenario, node_faults)
    data = HeteroData()
    for kind in VERTEX_TYPES:
        data[kind].x = torch.from_numpy(a[f"{kind}_x"])
    data["pending"].task_id = torch.from_numpy(a["pending_task_id"])
    data["running"].task_id = torch.from_numpy(a["running_task_id"])
    data["cluster"].window_row = torch.from_numpy(a["window_row"])  # [N, W] -> pending row, -1 empty
    for et, index in forward_edges(a).items():
        index = torch.from_numpy(np.ascontiguousarray(index))
        data[et].edge_index = index
        data[reverse(et)].edge_index = index.flip(0)
    return data
