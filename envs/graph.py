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


def feature_columns(resources: list[str] | tuple[str, ...], task_types: list[str] | tuple[str, ...]
                    ) -> dict[str, list[str]]:
    """Names of the feature columns `graph_arrays` builds, per vertex type, in column order."""
    res, types = list(resources), list(task_types)
    return {
        "cluster": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res]
                   + ["running_tasks/M", "window_tasks/window", "queue_len/window"],
        "node": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res],
        "pending": [f"type={t}" for t in types] + [f"minimum_{r}/grid_max" for r in res]
                   + ["log1p(wait)", "work", "visible_clusters/N", "1/(1+deadline_left) or 0"],
        "running": [f"type={t}" for t in types] + [f"alloc_{r}/grid_max" for r in res]
                   + ["progress", "log1p(age)"],
    }


def feature_layout(scenario: Scenario) -> dict[str, list[str]]:
    """`feature_columns` with the scenario's resource and task-type names."""
    return feature_columns(scenario.resources, [t.name for t in scenario.task_types])


def feature_dims(num_types: int, num_resources: int) -> dict[str, int]:
    """Width of each vertex type's features (the model's input sizes)."""
    cols = feature_columns([f"r{i}" for i in range(num_resources)], [f"t{k}" for k in range(num_types)])
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


def graph_arrays(obs: dict[str, np.ndarray], scenario: Scenario) -> dict[str, np.ndarray]:
    """The numpy content of the graph (features, edge lists, index maps); torch-free."""
    N, W = obs["window_id"].shape
    K = len(scenario.task_types)
    scale = feature_scales(scenario)
    grid = np.asarray(scenario.grid_max, dtype=np.float64)
    M = obs["running_id"].shape[1]
    dims = feature_dims(K, len(grid))

    free = obs["node_free"].astype(np.float64)
    cap = obs["node_capacity"].astype(np.float64)
    n_running = (obs["running_id"] >= 0).sum(axis=1)
    n_window = (obs["window_id"] >= 0).sum(axis=1)
    cluster_x = np.concatenate([cap.sum(axis=1) / scale, free.sum(axis=1) / scale,
                                np.stack([n_running / max(M, 1), n_window / W,
                                          obs["queue_len"][:, 0] / W], axis=1)], axis=1)

    node_valid = obs["node_id"] >= 0
    node_global = obs["node_id"][node_valid]
    order = np.argsort(node_global)
    node_cluster = np.nonzero(node_valid)[0][order]
    node_x = np.concatenate([cap[node_valid] / scale, free[node_valid] / scale], axis=1)[order]
    # local (cluster, slot) -> row in node_x
    node_row = np.full(node_valid.shape, -1, dtype=np.int64)
    node_row[node_valid] = np.argsort(order)

    wid = obs["window_id"]
    occupied = wid >= 0
    task_ids, first = np.unique(wid[occupied], return_index=True)
    flat = np.flatnonzero(occupied.ravel())[first]  # first occurrence of each task
    wtype = obs["window_type"].ravel()[flat]
    pending_x = np.concatenate([
        np.eye(K)[wtype],
        obs["alloc_low"].reshape(N * W, -1)[flat] / grid,
        np.stack([np.log1p(obs["window_wait"].ravel()[flat]),
                  obs["window_work"].ravel()[flat],
                  obs["window_visible"].ravel()[flat] / N,
                  np.where(obs["window_deadline"].ravel()[flat] >= 0,
                           1.0 / (1.0 + np.maximum(obs["window_deadline"].ravel()[flat], 0)), 0.0)], axis=1),
    ], axis=1) if len(task_ids) else np.zeros((0, dims["pending"]))
    window_row = np.full((N, W), -1, dtype=np.int64)
    window_row[occupied] = np.searchsorted(task_ids, wid[occupied])
    vis_agent, vis_place = np.nonzero(occupied)

    rid = obs["running_id"]
    live = rid >= 0
    r_agent, r_place = np.nonzero(live)
    rtype = obs["running_type"][live]
    running_x = np.concatenate([
        np.eye(K)[rtype],
        obs["running_alloc"][live] / grid,
        np.stack([obs["running_progress"][live], np.log1p(obs["running_age"][live])], axis=1),
    ], axis=1) if live.any() else np.zeros((0, dims["running"]))
    running_node = node_row[r_agent, obs["running_node"][live]] if live.any() else np.zeros(0, dtype=np.int64)

    return {
        "cluster_x": cluster_x.astype(np.float32),
        "node_x": node_x.astype(np.float32),
        "node_cluster": node_cluster.astype(np.int64),
        "pending_x": pending_x.astype(np.float32),
        "pending_task_id": task_ids.astype(np.int64),
        "visible_edge": np.stack([window_row[vis_agent, vis_place], vis_agent]).astype(np.int64),
        "window_row": window_row,
        "running_x": running_x.astype(np.float32),
        "running_task_id": rid[live].astype(np.int64),
        "placed_edge": np.stack([np.arange(len(running_node)), running_node]).astype(np.int64),
    }


def build_hetero_graph(obs: dict[str, np.ndarray], scenario: Scenario):
    """A `HeteroData` graph of the joined agent views (batched observations, one row per agent)."""
    import torch
    from torch_geometric.data import HeteroData

    a = graph_arrays(obs, scenario)
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
