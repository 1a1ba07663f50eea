"""Capacity that changes over time: the share of each cluster available at a slot, and the node
capacities it gives.

A cluster's `CapacitySchedule` (tapfinger/sim/scenario.py) gives the share a(t) of its capacity
that is available at time t (idle edge servers follow the day: EdgeFlow). The share is filled node
by node, in the cluster's order: with k nodes, node j gets the fraction clip(a * k - j, 0, 1) of its
capacity, floored per resource. So a site of four one-GPU servers at a = 0.6 has two whole servers
and one holding 40% of its CPUs and no GPU; a single large node keeps a floored share of everything.
The engine reads the capacities at the start of every slot (a change is a scheduling event, like an
arrival): `node_capacity_at` is the one home of that rule.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from tapfinger.sim.scenario import CapacitySchedule, Scenario
from tapfinger.sim.tables import static_tables


def available_share(schedule: CapacitySchedule, seconds: float) -> float:
    """The share of the cluster available `seconds` after the episode's start, in [0, 1]."""
    t = seconds + schedule.start_seconds
    if schedule.curve == "constant":
        return 1.0
    if schedule.curve == "tidal":
        phase = 2.0 * math.pi * (t - schedule.peak_seconds) / schedule.period_seconds
        load = schedule.peak_load * (schedule.trough_ratio + (1.0 - schedule.trough_ratio) * (1.0 + math.cos(phase)) / 2.0)
        return min(1.0, max(0.0, 1.0 - load))
    if schedule.curve == "csv":
        if not schedule.times:
            raise ValueError(f"capacity schedule of {schedule.file or 'a cluster'} holds no rows (was the scenario "
                             f"loaded with resolve_files=False?). Fix: load it with its CSV file in place")
        k = bisect.bisect_right(schedule.times, t) - 1
        return float(schedule.shares[max(k, 0)])
    raise ValueError(f"unknown capacity curve {schedule.curve!r}. Fix: use constant, tidal or csv")


def node_capacity_at(scenario: Scenario, slot: int) -> np.ndarray:
    """[nodes, R] int64: every node's capacity available during `slot` (<= its static capacity)."""
    st = static_tables(scenario)
    if not scenario.capacity_varies:
        return st.node_capacity.copy()
    cap = st.node_capacity.copy()
    seconds = slot * scenario.slot_seconds
    for ci, cluster in enumerate(scenario.clusters):
        if not cluster.capacity_schedule.varies:
            continue
        nodes = st.cluster_nodes[ci, : st.nodes_per_cluster[ci]]
        share = available_share(cluster.capacity_schedule, seconds) * len(nodes)
        fraction = np.clip(share - np.arange(len(nodes)), 0.0, 1.0)
        # a tiny epsilon: a share of exactly 0.5 of 8 GPUs is 4, not 3.9999999
        cap[nodes] = np.floor(st.node_capacity[nodes] * fraction[:, None] + 1e-9).astype(np.int64)
    return cap
