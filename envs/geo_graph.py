"""The heterogeneous graph of one geo slot: its layout (vertex types, edge types, feature and edge
attribute columns) and its arrays, built from the observation of `envs.geo_observations`.

Vertices: `site` (every site, in site order) and `job` (the window's jobs, in window order: the
oldest pending first). Edges, each with its reverse (prefixed `rev_`, same attributes):

* job -data-> site: the job has passes left at the site (attributes: its movable blocks there,
  its passes left there, and that site's share of the job's passes left);
* site -link-> site: every ordered pair of different sites (bandwidth cost, link capacity);
* job -ps-> site: the current placement's parameter server (no attributes);
* job -worker-> site: the current placement's workers, one edge per site with workers.

This module is the one home of that layout: a learned policy reads the column names, widths and
edge types from here (`feature_columns`, `EDGE_ATTR_COLUMNS`, `EDGE_TYPES`), so changing them is
changing that policy's input. It is torch-free (`build_hetero_graph` imports torch only when
called). Features are normalised by scenario constants (the largest capacity per resource, the
largest cost and link, the largest job), so values stay near [0, 1] on any geo scenario.
"""

from __future__ import annotations

import numpy as np

from envs.geo_observations import max_job_blocks
from tapfinger.sim.geo.model import GeoScenario

EdgeType = tuple[str, str, str]

VERTEX_TYPES: tuple[str, ...] = ("site", "job")
# The forward edge types, each with the key prefix of its arrays: `{key}_edge` [2, E] (source row,
# destination row) and `{key}_attr` [E, len(EDGE_ATTR_COLUMNS[key])].
FORWARD_EDGES: tuple[tuple[EdgeType, str], ...] = (
    (("job", "data", "site"), "data"),
    (("site", "link", "site"), "link"),
    (("job", "ps", "site"), "ps"),
    (("job", "worker", "site"), "worker"),
)
EDGE_ATTR_COLUMNS: dict[str, list[str]] = {
    "data": ["movable_blocks/max_job_blocks", "passes_left/(epochs*max_job_blocks)",
             "share (passes_left here / the job's passes left)"],
    "link": ["cost/max_cost", "link_mb/max_link_mb (0 = unlimited)", "unlimited (1 = no link capacity)"],
    "ps": [],
    "worker": ["workers/max_workers_per_site"],
}


def reverse(edge_type: EdgeType) -> EdgeType:
    src, rel, dst = edge_type
    return dst, f"rev_{rel}", src


# Every edge type, each forward type followed by its reverse (the order a model sums messages in).
EDGE_TYPES: tuple[EdgeType, ...] = tuple(e for fwd, _ in FORWARD_EDGES for e in (fwd, reverse(fwd)))


def feature_columns(resources: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """Names of the vertex feature columns `graph_arrays` builds, per vertex type, in column order."""
    res = list(resources)
    return {
        "site": [f"capacity_{r}/scale" for r in res] + [f"free_{r}/scale" for r in res]
                + ["mean_cost_to_others/max_cost"],
        "job": ["log1p(wait)", "passes_left/passes_total", "passes_total/(max_epochs*max_job_blocks)"]
               + [f"worker_{r}/scale" for r in res] + [f"ps_{r}/scale" for r in res]
               + ["exchange_mb/100", "block_mb/100", "epochs/max_epochs", "rate/max_rate",
                  "log1p(latency_increment)", "placed (1 = has a PS now)", "log1p(workers now)"],
    }


def feature_dims(num_resources: int) -> dict[str, int]:
    """Width of each vertex type's features (a model's input sizes)."""
    return {k: len(v) for k, v in feature_columns([f"r{i}" for i in range(num_resources)]).items()}


class _Constants:
    """What graph_arrays needs of a scenario, computed once per scenario object: the scales and the
    link edges (all R (R - 1) ordered pairs, fixed for the scenario)."""

    def __init__(self, scenario: GeoScenario):
        self.scenario = scenario
        cap, cost, link = scenario.sites.arrays()
        R = scenario.num_sites
        self.inv_res = 1.0 / np.maximum(cap.max(axis=0), 1).astype(np.float64)
        max_cost = float(cost.max()) if cost.max() > 0 else 1.0
        max_link = float(link.max()) if link.max() > 0 else 1.0
        self.blocks = float(max_job_blocks(scenario))
        self.epochs = float(scenario.jobs.epochs[1])
        self.rate = float(scenario.jobs.blocks_per_slot[1])
        self.max_workers = float(scenario.max_workers_per_site)
        off = ~np.eye(R, dtype=bool)
        src, dst = np.nonzero(off)
        self.link_edge = np.stack([src, dst]).astype(np.int64)
        self.link_attr = np.stack([cost[src, dst] / max_cost, link[src, dst] / max_link,
                                   (link[src, dst] == 0).astype(float)], axis=1).astype(np.float32)
        self.mean_cost = (cost.sum(axis=1) / max(R - 1, 1) / max_cost).astype(np.float32)


_CONSTANTS: dict[int, _Constants] = {}


def _constants(scenario: GeoScenario) -> _Constants:
    c = _CONSTANTS.get(id(scenario))
    if c is None or c.scenario is not scenario:  # ids are reused after a scenario is freed
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        c = _CONSTANTS[id(scenario)] = _Constants(scenario)
    return c


def _site_features(obs: dict[str, np.ndarray], c: _Constants) -> np.ndarray:
    R, K = obs["site_capacity"].shape
    x = np.empty((R, 2 * K + 1), dtype=np.float32)
    x[:, :K] = obs["site_capacity"] * c.inv_res
    x[:, K:2 * K] = obs["site_free"] * c.inv_res
    x[:, 2 * K] = c.mean_cost
    return x


def _job_features(obs: dict[str, np.ndarray], rows: np.ndarray, c: _Constants) -> np.ndarray:
    K = obs["job_worker"].shape[1]
    x = np.empty((len(rows), 2 * K + 10), dtype=np.float32)
    left = obs["job_passes_left"][rows].sum(axis=1)
    total = obs["job_passes_total"][rows]
    x[:, 0] = np.log1p(obs["job_wait"][rows])
    x[:, 1] = left / np.maximum(total, 1)
    x[:, 2] = total / (c.epochs * c.blocks)
    x[:, 3:3 + K] = obs["job_worker"][rows] * c.inv_res
    x[:, 3 + K:3 + 2 * K] = obs["job_ps"][rows] * c.inv_res
    tail = 3 + 2 * K
    x[:, tail] = obs["job_exchange_mb"][rows] / 100.0
    x[:, tail + 1] = obs["job_block_mb"][rows] / 100.0
    x[:, tail + 2] = obs["job_epochs"][rows] / c.epochs
    x[:, tail + 3] = obs["job_rate"][rows] / c.rate
    x[:, tail + 4] = np.log1p(np.maximum(obs["job_latency_increment"][rows], 0.0))
    x[:, tail + 5] = obs["job_ps_site"][rows] >= 0
    x[:, tail + 6] = np.log1p(obs["job_workers"][rows].sum(axis=1))
    return x


def graph_arrays(obs: dict[str, np.ndarray], scenario: GeoScenario) -> dict[str, np.ndarray]:
    """The numpy content of the graph of the scheduler's observation `obs`: `site_x`, `job_x`,
    `job_id` (the job index of each job vertex), `job_window_row` (its window row), and per forward
    edge type `{key}_edge` and `{key}_attr` (see `FORWARD_EDGES`, `EDGE_ATTR_COLUMNS`)."""
    c = _constants(scenario)
    rows = np.flatnonzero(obs["job_id"] >= 0)  # job vertex v is window row rows[v]
    passes = obs["job_passes_left"][rows]  # [J, R]
    d_job, d_site = np.nonzero(passes > 0)
    job_left = np.maximum(passes.sum(axis=1), 1)
    epochs = obs["job_epochs"][rows]
    data_attr = np.stack([obs["movable"][rows][d_job, d_site] / c.blocks,
                          passes[d_job, d_site] / (np.maximum(epochs[d_job], 1) * c.blocks),
                          passes[d_job, d_site] / job_left[d_job]], axis=1).astype(np.float32)
    ps = obs["job_ps_site"][rows]
    p_job = np.flatnonzero(ps >= 0)
    workers = obs["job_workers"][rows]
    w_job, w_site = np.nonzero(workers > 0)
    return {
        "site_x": _site_features(obs, c),
        "job_x": _job_features(obs, rows, c),
        "job_id": obs["job_id"][rows].astype(np.int64),
        "job_window_row": rows.astype(np.int64),
        "data_edge": np.stack([d_job, d_site]).astype(np.int64),
        "data_attr": data_attr.reshape(-1, len(EDGE_ATTR_COLUMNS["data"])),
        "link_edge": c.link_edge.copy(),  # copies: the cached arrays stay the scenario's
        "link_attr": c.link_attr.copy(),
        "ps_edge": np.stack([p_job, ps[p_job]]).astype(np.int64),
        "ps_attr": np.zeros((len(p_job), 0), dtype=np.float32),
        "worker_edge": np.stack([w_job, w_site]).astype(np.int64),
        "worker_attr": (workers[w_job, w_site] / c.max_workers).astype(np.float32)[:, None],
    }


def build_hetero_graph(obs: dict[str, np.ndarray], scenario: GeoScenario):
    """A torch-geometric `HeteroData` of `graph_arrays` (edge_index and edge_attr per edge type)."""
    import torch
    from torch_geometric.data import HeteroData

    a = graph_arrays(obs, scenario)
    data = HeteroData()
    for kind in VERTEX_TYPES:
        data[kind].x = torch.from_numpy(a[f"{kind}_x"])
    data["job"].job_id = torch.from_numpy(a["job_id"])
    data["job"].window_row = torch.from_numpy(a["job_window_row"])
    for et, key in FORWARD_EDGES:
        index = torch.from_numpy(np.ascontiguousarray(a[f"{key}_edge"]))
        attr = torch.from_numpy(np.ascontiguousarray(a[f"{key}_attr"]))
        data[et].edge_index, data[et].edge_attr = index, attr
        data[reverse(et)].edge_index, data[reverse(et)].edge_attr = index.flip(0), attr
    return data
