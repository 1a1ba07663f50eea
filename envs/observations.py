"""Per-agent observations: fixed-size padded numpy arrays plus the action masks.

All agents' observations are computed at once as [N, ...] arrays; each agent's dict holds views
into them. Values are raw (slots, units of each resource); models normalise them.

Keys (W = window size, M = max running tasks, Nn = max nodes per cluster, R = resources):

| key | shape | meaning |
|---|---|---|
| agent | (1,) | this agent's index |
| slot, round | (1,) | current slot, and round within it |
| queue_len | (1,) | tasks waiting in this cluster's queue behind the window |
| node_id | (Nn,) | global node index, -1 = padding |
| node_capacity, node_free | (Nn, R) | per node: the capacity available now (it follows the cluster's capacity schedule), and what of it is free |
| node_kind | (Nn,) | 0 = edge, 1 = cloud, -1 = padding |
| node_health | (Nn,) | 1 = up, 0 = failed or away (`[faults]`: seen when it happens, never before), -1 = padding |
| node_speed | (Nn,) | current speed factor of the node (below 1 during a slowdown), 0 for padding |
| window_id | (W,) | global task id, -1 = empty place |
| window_type | (W,) | task type index, -1 = empty |
| window_wait | (W,) | slots since arrival |
| window_visible | (W,) | how many clusters see the task |
| window_work | (W,) | estimated amount of work (1 = one task of its type as profiled); the truth differs under `[uncertainty]` |
| window_deadline | (W,) | slots left to the deadline, -1 = none |
| running_id, running_type, running_node | (M,) | -1 = empty; running_node is the local node index |
| running_alloc | (M, R) | current allocation |
| running_progress | (M,) | progress in [0, 1) |
| running_age, running_start | (M,) | slots since arrival; slot it (first) started |
| running_deadline | (M,) | slots left to the deadline, -1 = none |
| task_mask | (W+1,) | 1 = allowed; index 0 = do nothing, i = window place i-1 |
| decline_mask | (W+1,) | 1 = allowed; index 0 = decline nothing, i = decline window place i-1 (only where the scenario has `allow_decline`) |
| node_mask | (W, Nn) | 1 = the task's minimum fits on that node |
| alloc_low | (W, R) | smallest allowed amount of each resource for the task (its minimum) |
| alloc_high | (Nn, R) | largest allowed amount on each node (min(grid max, free)) |

The allocation mask of resource r for window place w on node n is the interval
alloc_low[w, r] <= a <= alloc_high[n, r]: factorised, so it stays small for large grids.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from tapfinger.sim.engine import Engine

BIG = 2**31 - 1
INT_KEYS_SCALAR = ("agent", "slot", "round", "queue_len")


def observation_space(engine: Engine) -> spaces.Dict:
    N, W, M, R = engine.N, engine.W, engine.M, engine.R
    Nn = engine.static.max_nodes
    cap = int(engine.static.node_capacity.max())
    grid = int(engine.static.grid_max.max())

    def ints(low, high, shape):
        return spaces.Box(low=low, high=high, shape=shape, dtype=np.int64)

    def floats(low, high, shape):
        return spaces.Box(low=low, high=high, shape=shape, dtype=np.float32)

    return spaces.Dict({
        "agent": ints(0, N - 1, (1,)),
        "slot": ints(0, BIG, (1,)),
        "round": ints(0, BIG, (1,)),
        "queue_len": ints(0, BIG, (1,)),
        "node_id": ints(-1, BIG, (Nn,)),
        "node_capacity": ints(0, cap, (Nn, R)),
        "node_free": ints(0, cap, (Nn, R)),
        "node_kind": ints(-1, 1, (Nn,)),
        "node_health": ints(-1, 1, (Nn,)),
        "node_speed": floats(0.0, 1.0, (Nn,)),
        "window_id": ints(-1, BIG, (W,)),
        "window_type": ints(-1, len(engine.scenario.task_types) - 1, (W,)),
        "window_wait": ints(0, BIG, (W,)),
        "window_visible": ints(0, N, (W,)),
        "window_work": floats(0.0, np.inf, (W,)),
        "window_deadline": ints(-1, BIG, (W,)),
        "running_id": ints(-1, BIG, (M,)),
        "running_type": ints(-1, len(engine.scenario.task_types) - 1, (M,)),
        "running_node": ints(-1, Nn - 1, (M,)),
        "running_alloc": ints(0, grid, (M, R)),
        "running_progress": floats(0.0, 1.0, (M,)),
        "running_age": ints(0, BIG, (M,)),
        "running_start": ints(-1, BIG, (M,)),
        "running_deadline": ints(-1, BIG, (M,)),
        "task_mask": ints(0, 1, (W + 1,)),
        "decline_mask": ints(0, 1, (W + 1,)),
        "node_mask": ints(0, 1, (W, Nn)),
        "alloc_low": ints(0, grid, (W, R)),
        "alloc_high": ints(0, grid, (Nn, R)),
    })


def build_observations(engine: Engine) -> dict[str, np.ndarray]:
    """All agents' observations as [N, ...] arrays (see the module docstring for the keys)."""
    e, st = engine, engine.static
    N, empty = e.N, e.empty
    win = e.window
    occupied = win != empty
    wtype = e.task_type[win]
    node_ok = st.cluster_nodes >= 0
    gnodes = np.where(node_ok, st.cluster_nodes, 0)
    node_free = np.where(node_ok[..., None], e.node_free[gnodes], 0)
    node_cap = np.where(node_ok[..., None], e.node_capacity_now[gnodes], 0)
    tmin = st.type_min[wtype]  # [N, W, R]
    fits = (node_free[:, None, :, :] >= tmin[:, :, None, :]).all(axis=3) & node_ok[:, None, :]
    fits &= occupied[:, :, None]
    can_start = (e.num_running < st.max_running)[:, None]
    task_ok = fits.any(axis=2) & can_start
    run = e.running
    r_live = run != empty
    r_node_global = e.node[run]
    # local node index of each running task: position of its global node in the cluster's list
    r_node_local = np.argmax(st.cluster_nodes[:, None, :] == r_node_global[:, :, None], axis=2)
    deadline = e.deadline[win]
    r_deadline = e.deadline[run]
    may_decline = occupied if e.scenario.allow_decline else np.zeros_like(occupied)
    return {
        "agent": np.arange(N, dtype=np.int64)[:, None],
        "slot": np.full((N, 1), e.slot, dtype=np.int64),
        "round": np.full((N, 1), e.round, dtype=np.int64),
        "queue_len": e.queue_lengths()[:, None],
        "node_id": st.cluster_nodes,
        "node_capacity": node_cap,
        "node_free": node_free,
        "node_kind": np.where(node_ok, st.node_kind[gnodes], -1),
        "node_health": np.where(node_ok, e.node_state.up[gnodes], -1),
        "node_speed": np.where(node_ok, e.node_state.speed[gnodes], 0.0).astype(np.float32),
        "window_id": np.where(occupied, win, -1),
        "window_type": np.where(occupied, wtype, -1),
        "window_wait": np.where(occupied, e.age[win], 0),
        "window_visible": np.where(occupied, e.vis_count[win], 0),
        # the estimate, never the true work (hidden speed factors stay hidden)
        "window_work": np.where(occupied, e.work_estimate[win], 0.0).astype(np.float32),
        "window_deadline": np.where(occupied & (deadline >= 0), np.maximum(deadline - e.slot, 0), -1),
        "running_id": np.where(r_live, run, -1),
        "running_type": np.where(r_live, e.task_type[run], -1),
        "running_node": np.where(r_live, r_node_local, -1),
        "running_alloc": np.where(r_live[..., None], e.alloc[run], 0),
        "running_progress": np.where(r_live, np.minimum(e.progress[run], 1.0), 0.0).astype(np.float32),
        "running_age": np.where(r_live, e.age[run], 0),
        "running_start": np.where(r_live, e.start[run], -1),
        "running_deadline": np.where(r_live & (r_deadline >= 0), np.maximum(r_deadline - e.slot, 0), -1),
        "task_mask": np.concatenate([np.ones((N, 1), dtype=np.int64), task_ok.astype(np.int64)], axis=1),
        "decline_mask": np.concatenate([np.ones((N, 1), dtype=np.int64), may_decline.astype(np.int64)], axis=1),
        "node_mask": fits.astype(np.int64),
        "alloc_low": np.where(occupied[..., None], tmin, 0),
        "alloc_high": np.where(node_ok[..., None], np.minimum(node_free, st.grid_max), 0),
    }


def split_observations(batched: dict[str, np.ndarray], agents: list[str]) -> dict[str, dict[str, np.ndarray]]:
    return {a: {k: v[i] for k, v in batched.items()} for i, a in enumerate(agents)}
