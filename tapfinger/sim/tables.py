"""What a scenario fixes for a whole episode, as arrays: node capacities and owners, task-type
minimums, progress tables, the grid, and how many tasks a cluster may run. One cached builder
(`static_tables`) serves the engine, the heuristics, the learned policy and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tapfinger.sim.progress import profile_tables, read_profile, synthetic_tables, throughput_tables
from tapfinger.sim.scenario import Scenario


@dataclass(frozen=True)
class StaticTables:
    """Everything about a scenario that does not change during an episode."""

    node_capacity: np.ndarray  # [num_nodes, R]
    node_cluster: np.ndarray  # [num_nodes]
    cluster_nodes: np.ndarray  # [N, max_nodes] global node index, -1 = padding
    nodes_per_cluster: np.ndarray  # [N]
    type_min: np.ndarray  # [K, R]
    weight: np.ndarray  # [K, C+1, G+1] progress tables (see progress.py)
    base: np.ndarray  # [K, C+1, G+1]
    grid_max: np.ndarray  # [R]
    max_running: np.ndarray  # [N] how many tasks a cluster may run at once
    cpu: int  # index of the cpu resource
    gpu: int  # index of the gpu resource
    node_speed: np.ndarray  # [K, num_nodes] speed factor of each type on each node (edge_speed on edge nodes)
    node_kind: np.ndarray  # [num_nodes] 0 = edge, 1 = cloud
    cluster_kind: np.ndarray  # [N] 0 = edge, 1 = cloud

    @property
    def max_nodes(self) -> int:
        return int(self.cluster_nodes.shape[1])


@lru_cache(maxsize=32)
def static_tables(scenario: Scenario) -> StaticTables:
    """The tables of a scenario, built once per scenario (scenarios are frozen and hashable; profile
    scenarios read a CSV). The arrays are read-only: every user shares them."""
    R = scenario.num_resources
    caps, owner = [], []
    for ci, cl in enumerate(scenario.clusters):
        for node in cl.nodes:
            caps.append(node)
            owner.append(ci)
    node_capacity = np.asarray(caps, dtype=np.int64).reshape(-1, R)
    node_cluster = np.asarray(owner, dtype=np.int64)
    max_nodes = max(len(c.nodes) for c in scenario.clusters)
    cluster_nodes = np.full((scenario.num_clusters, max_nodes), -1, dtype=np.int64)
    for ci in range(scenario.num_clusters):
        idx = np.flatnonzero(node_cluster == ci)
        cluster_nodes[ci, : len(idx)] = idx
    type_min = np.asarray([t.minimum for t in scenario.task_types], dtype=np.int64)
    cpu, gpu = scenario.resource_index("cpu"), scenario.resource_index("gpu")
    grid = np.asarray(scenario.grid_max, dtype=np.int64)
    c_max, g_max = int(grid[cpu]), int(grid[gpu])
    profile = read_profile(scenario.profile) if scenario.profile and any(
        t.progress.model == "profile" for t in scenario.task_types) else None
    weights, bases = [], []
    for t in scenario.task_types:
        if t.progress.model == "synthetic":
            w, b = synthetic_tables(t.progress.gpu_scale, t.progress.base, c_max, g_max)
        elif t.progress.model == "throughput":
            w, b = throughput_tables(t.progress.gpus, t.progress.iterations_per_second, t.progress.iterations,
                                     c_max, g_max, scenario.slot_seconds)
        else:
            w, b = profile_tables(profile, t.progress.profile_task, int(t.minimum[cpu]), int(t.minimum[gpu]),
                                  c_max, g_max, scenario.slot_seconds, scenario.startup_seconds)
        weights.append(w)
        bases.append(b)
    # A cluster runs at most, per node, as many tasks as the smallest minimum of each resource fits
    # (a task needs at least its minimum to start); this bounds the padded running lists and never
    # blocks a start that fits, even when task types have different minimum shapes.
    everyone_needs = (type_min > 0).all(axis=0)  # resources every task type asks for
    smallest = np.where(type_min > 0, type_min, np.iinfo(np.int64).max).min(axis=0)
    if everyone_needs.any():
        per_node = (node_capacity[:, everyone_needs] // smallest[everyone_needs]).min(axis=1)
    else:  # each task still needs some resource: the counts of all resources bound the total
        used = smallest < np.iinfo(np.int64).max
        per_node = (node_capacity[:, used] // smallest[used]).sum(axis=1)
    max_running = np.asarray([int(per_node[node_cluster == ci].sum()) for ci in range(scenario.num_clusters)],
                             dtype=np.int64)
    cluster_kind = np.asarray([1 if c.kind == "cloud" else 0 for c in scenario.clusters], dtype=np.int64)
    node_kind = cluster_kind[node_cluster]
    edge_speed = np.asarray([t.edge_speed for t in scenario.task_types], dtype=np.float64)
    node_speed = np.where(node_kind[None, :] == 1, 1.0, edge_speed[:, None])
    tables = StaticTables(node_capacity, node_cluster, cluster_nodes,
                          np.asarray([len(c.nodes) for c in scenario.clusters], dtype=np.int64), type_min,
                          np.stack(weights), np.stack(bases), grid, np.maximum(max_running, 1), cpu, gpu,
                          node_speed, node_kind, cluster_kind)
    for value in vars(tables).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return tables
