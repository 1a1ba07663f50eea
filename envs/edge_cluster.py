"""PettingZoo ParallelEnv of edge clusters: one agent per cluster, one `step()` per round.

A geo scenario (issue 16) gives `envs.geo_env.GeoSitesEnv` instead, a subclass with its own
agent, observation and action (see that module).

Action of an agent (a `Dict`, or a plain int array `[task, node, *alloc]`):

* `task`  — 0 = do nothing, i = start the task in window place i-1;
* `node`  — the cluster-local node to place it on;
* `alloc` — the amount of each resource (in the order of the scenario's `resources`);
* `realloc` — optional preemption, `[M, R]`, one row per running place: a row of zeros keeps that
  task's allocation; otherwise every entry k sets that resource to k-1 (a row that mixes 0 with
  other values is invalid; a row of ones, i.e. all resources 0, pauses the task). Needs
  `allow_preemption = true`. A task whose allocation at a slot end differs from the previous slot
  end progresses by `switch_weight ×` its amount in that slot.
* `decline` — admission control (only where the scenario has `allow_decline = true`): 0 = decline
  nothing, i = decline the task in window place i-1 (it leaves the system and counts as missed).

Every value is an integer (Python or numpy; a float only when it is an exact integer) within
the action space: never a boolean, a string, a fraction, NaN or a negative number (task 0 and
realloc 0 are the do-nothing encodings; nothing is truncated or read as "do nothing"). An absent
key or `None` takes its default (task 0, node 0, alloc zeros, no realloc); an agent left out of
`actions` does nothing.

A malformed action (outside the action space: wrong type, shape or range, an unknown key) and an
infeasible one (the masks forbid it) are, by default, a no-op of that agent counted in
`infos[agent]["invalid_actions"]`; with `strict=True` they raise `InvalidActionError` naming the
agent, the key and the expected form, and the whole round is checked before any of it is applied,
so after the error the environment is exactly as before the call. A key of `actions` that is no
agent raises `InvalidActionError` in both modes (there is no agent to count it against). Rewards are given at the end of each slot (the round in which no agent started a task):
minus the number of tasks in the agent's cluster. The episode ends when every task has arrived
and finished (termination), or at the scenario's `max_slots` (truncation).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.actions import EnvActionReader
from envs.observations import build_observations, observation_space, split_observations
from tapfinger.sim.engine import RUNNING, WAITING, Engine, InvalidActionError
from tapfinger.sim.geo.model import GeoScenario
from tapfinger.sim.geo.scenario import is_geo_scenario
from tapfinger.sim.scenario import Scenario, load_scenario

ENV_ID = "tapfinger/edge-cluster-v0"


class EdgeClusterEnv(ParallelEnv):
    metadata = {"name": "edge_cluster_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __new__(cls, scenario: Any = "edge-default", *args: Any, **kwargs: Any):
        # A geo scenario (issue 16: a built-in name, a TOML path with family = "geo", a GeoScenario)
        # gets the geo env, a subclass, so this one entry point serves both families. Unpickling
        # calls __new__ without arguments: the default is no geo scenario.
        if cls is EdgeClusterEnv and _is_geo(scenario):
            from envs.geo_env import GeoSitesEnv  # lazily: envs.geo_env imports this module

            return super().__new__(GeoSitesEnv)
        return super().__new__(cls)

    def __init__(self, scenario: str | Scenario = "edge-default", strict: bool = False,
                 render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use 'ansi' or None")
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.engine = Engine(self.scenario, strict=strict)
        self.render_mode = render_mode
        # Agent i acts for cluster i (its name is in `cluster_names`).
        self.possible_agents = [f"cluster_{i}" for i in range(self.scenario.num_clusters)]
        self.cluster_names = [c.name for c in self.scenario.clusters]
        self.agents: list[str] = []
        self._obs_space = observation_space(self.engine)
        grid = self.engine.static.grid_max
        keys = {
            "task": spaces.Discrete(self.engine.W + 1),
            "node": spaces.Discrete(self.engine.static.max_nodes),
            "alloc": spaces.MultiDiscrete(grid + 1),
            "realloc": spaces.MultiDiscrete(np.tile(grid + 2, (self.engine.M, 1))),
        }
        if self.scenario.allow_decline:  # admission control: only scenarios that allow it have the key
            keys["decline"] = spaces.Discrete(self.engine.W + 1)
        self._act_space = spaces.Dict(keys)
        self.state_space = spaces.Box(low=-np.inf, high=np.inf, shape=self._state_size(), dtype=np.float32)
        self._seed: int | None = None
        self._episode = 0
        self._batched: dict[str, np.ndarray] | None = None
        self._reader = EnvActionReader(self.engine, self.possible_agents, self.scenario.resources)

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        elif self._seed is None:
            self._seed = int(np.random.SeedSequence().entropy % (2**31))
        # Without a new seed, successive episodes continue a deterministic sequence.
        self.engine.reset(self._seed + 1_000_003 * self._episode)
        self._episode += 1
        self.agents = list(self.possible_agents)
        return self._observe(), self._infos(slot_ended=False)

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        round_actions, malformed = self._reader.read(actions)
        e = self.engine
        if malformed:
            if e.strict:
                raise InvalidActionError(malformed[min(malformed)])  # the lowest agent, as the engine would
            for i in malformed:  # default mode: the agent does nothing this round, counted
                e.invalid_actions[i] += 1
        # In strict mode `play` checks the whole round before applying any of it.
        return self._finish_round(round_actions.play(e, self.possible_agents))

    def _finish_round(self, slot_ended: bool):
        e = self.engine
        rewards = {a: float(e.last_rewards[i]) if slot_ended else 0.0 for i, a in enumerate(self.possible_agents)}
        terminated = e.done and not e.truncated
        truncated = e.truncated
        obs = self._observe()
        infos = self._infos(slot_ended)
        terms = {a: terminated for a in self.agents}
        truncs = {a: truncated for a in self.agents}
        if e.done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def state(self) -> np.ndarray:
        """Global view for a centralised critic: per cluster its free resources, counts and queue,
        and per task type the tasks waiting and running anywhere, as one flat float32 vector."""
        e = self.engine
        st = e.static
        cap = np.maximum(st.node_capacity.max(axis=0), 1)
        free = e.cluster_free() / cap
        counts = np.stack([e.num_running, e.num_waiting, e.queue_lengths()], axis=1) / max(e.W, 1)
        K = len(self.scenario.task_types)
        waiting = np.bincount(e.task_type[e.status == WAITING], minlength=K)
        running = np.bincount(e.task_type[e.status == RUNNING], minlength=K)
        return np.concatenate([free.ravel(), counts.ravel(), waiting / max(e.W, 1), running / max(e.W, 1),
                               [e.slot / 100.0]]).astype(np.float32)

    def _state_size(self) -> tuple[int]:
        return (self.engine.N * (self.engine.R + 3) + 2 * len(self.scenario.task_types) + 1,)

    def render(self) -> str | None:
        if self.render_mode is None:
            return None
        return render_ansi(self.engine)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def batched_observations(self) -> dict[str, np.ndarray]:
        """The last observations of all agents as [N, ...] arrays (what policies batch over)."""
        return self._batched

    def _observe(self) -> dict[str, dict[str, np.ndarray]]:
        self._batched = build_observations(self.engine)
        if not self.agents:
            return {}
        return split_observations(self._batched, self.possible_agents)

    def _infos(self, slot_ended: bool) -> dict[str, dict]:
        e = self.engine
        return {a: {"slot": e.slot, "slot_ended": slot_ended, "invalid_actions": int(e.invalid_actions[i]),
                    "conflicts": int(e.conflicts[i])} for i, a in enumerate(self.agents)}


def _is_geo(scenario: Any) -> bool:
    if isinstance(scenario, GeoScenario):
        return True
    return isinstance(scenario, (str, os.PathLike)) and is_geo_scenario(scenario)


def render_ansi(engine: Engine) -> str:
    e, sc = engine, engine.scenario
    names = [t.name for t in sc.task_types]
    lines = [f"slot {e.slot} round {e.round} | arrived {e.next_arrival}/{e.T} finished {e.finished_count}"]
    for i, cl in enumerate(sc.clusters):
        nodes = []
        for k, gn in enumerate(e.static.cluster_nodes[i][: e.static.nodes_per_cluster[i]]):
            free = "/".join(f"{f}" for f in e.node_free[gn])
            cap = "/".join(f"{c}" for c in e.static.node_capacity[gn])
            nodes.append(f"n{k} {free} of {cap}")
        run = [f"t{t}:{names[e.task_type[t]]}@{e.progress[t]:.2f}" for t in e.running[i] if t != e.empty]
        win = [f"t{t}:{names[e.task_type[t]]}" if t != e.empty else "_" for t in e.window[i]]
        lines.append(f"{cl.name:>10} [{' | '.join(nodes)}] ({'/'.join(sc.resources)} free of cap)")
        lines.append(f"{'':>10} run: {' '.join(run) or '-'}")
        lines.append(f"{'':>10} window: {' '.join(win)}  queue {e.queue_lengths()[i]}")
    return "\n".join(lines)
