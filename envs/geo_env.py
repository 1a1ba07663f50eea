"""PettingZoo ParallelEnv of the geo-distributed setting (issue 16): one scheduler, one step per slot.

Why one central agent ("scheduler_0") and not one per site: a job's parameter server and its
workers span sites, and the exchange cost of every worker depends on where the PS is, so placing
one job is a joint choice over all its sites; the per-site capacities are shared by all jobs and
the link capacities by all moves. Per-site agents would have to agree with one another on every
job each slot (a negotiation the patent's centralised scheduler does not have), and an agent
acting alone could not even name a valid decision. So the agent is the scheduler that
`agents.geo` policies are, and the env is the same `GeoEngine` slot: one `step()` = one slot.

`EdgeClusterEnv("geo-6")` (a geo built-in name, a TOML path with `family = "geo"`, or a
`GeoScenario`) returns a `GeoSitesEnv`: the edge env's entry point gives the geo env for geo
scenarios, so `isinstance(env, EdgeClusterEnv)` holds; everything else is this module's.

Observation: `envs.geo_observations` (a Dict of fixed shapes: the window of the oldest pending
jobs, the sites, the costs and links, and the masks). Action (a Dict; W = window, R = sites):

* `ps` — [W] integers 0..R: 0 = the job of that window row does not run this slot, r+1 = its
  parameter server is at site r;
* `workers` — [W, R] integers 0..max_workers_per_site: the job's workers at each site (they need
  a PS: a row with workers and `ps` 0 is invalid);
* `moves` — [W, R, R] integers 0..(the most blocks a job has): entry [w, r, r'] moves that many
  untouched blocks of the job from site r to r' (the diagonal must be 0). Moved blocks arrive at
  the end of the slot.

Each key is optional (absent or None = all zeros); the agent left out of `actions`, or given
None, does nothing (an empty decision: nothing runs, nothing moves). Every value is an integer
(numpy or Python; a float only when it is an exact integer), never a boolean, a string, NaN or a
negative number, of the declared shape and within the space.

Invalid actions. A malformed action (outside the action space: wrong type, shape, range, an
unknown key) and an infeasible one (an empty window row placed, a site over its capacity, a move
of absent blocks, a full link, ...) are, by default, a no-op slot: the WHOLE decision is dropped,
the slot is played with nothing running, and `infos["scheduler_0"]["invalid_actions"]` counts it
(`infos["scheduler_0"]["problem"]` says why). Not just the offending job: capacities and links are
shared, so when two jobs together overfill a site there is no "offending job" to drop; dropping
one of them would be a repair policy of its own hidden in the env. With `strict=True` the same
cases raise `GeoActionError` naming the problem, before anything changes. `step()` given no dict,
or a key that is no agent, raises `GeoActionError` in both modes.

Reward: minus the slot's cost (`GeoEngine.step`'s return: latency accrued + transfer + exchange),
so an episode's return is minus its total cost. The episode terminates when every job has
completed, and is truncated at the scenario's `max_slots`.

Registered in PettingZoo's registry as `GEO_ENV_ID` ("tapfinger/geo-sites-v0") when `envs` is
imported (`envs/__init__.py` registers both ids), parallel and AEC, like the edge env.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import numpy as np
import pettingzoo
from gymnasium import spaces
from pettingzoo.utils.conversions import parallel_to_aec

from envs.actions import integer_array
from envs.edge_cluster import EdgeClusterEnv
from envs.geo_observations import build_observation, max_job_blocks, observation_space, window_jobs
from tapfinger.sim.geo.engine import NO_SITE, GeoActionError, GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoScenario
from tapfinger.sim.geo.scenario import load_geo_scenario

GEO_ENV_ID = "tapfinger/geo-sites-v0"
AGENT = "scheduler_0"  # PettingZoo's naming advice: <descriptor>_<number>
ACTION_KEYS = ("ps", "workers", "moves")
# Without a new seed, successive episodes continue a deterministic sequence (the edge env's rule).
EPISODE_STRIDE = 1_000_003


class GeoActionReader:
    """Reads the Dict action into a `GeoDecision` of the window's jobs, or says why it cannot."""

    def __init__(self, scenario: GeoScenario):
        W, R = scenario.window, scenario.num_sites
        self.W, self.R = W, R
        self.high = {"ps": R, "workers": scenario.max_workers_per_site, "moves": max_job_blocks(scenario)}
        self.shape = {"ps": (W,), "workers": (W, R), "moves": (W, R, R)}
        self.forms = {
            "ps": f"{W} integers 0..{R} (0 = do not run, r+1 = PS at site r)",
            "workers": f"a [{W}, {R}] integer array 0..{self.high['workers']} (workers per window row and site)",
            "moves": f"a [{W}, {R}, {R}] integer array 0..{self.high['moves']} (blocks moved from site r to r')",
        }

    def arrays(self, act: Any) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """The three int64 arrays of a well-formed action, or (None, why it is malformed)."""
        out = {k: np.zeros(s, dtype=np.int64) for k, s in self.shape.items()}
        if act is None:
            return out, None
        if not isinstance(act, dict):
            return None, (f"the action is {type(act).__name__} {reprlib.repr(act)}; expected a dict with the keys "
                          f"{', '.join(ACTION_KEYS)}")
        unknown = [k for k in act if k not in ACTION_KEYS]
        if unknown:
            return None, f"key(s) {unknown!r} are no action keys; expected the keys {', '.join(ACTION_KEYS)}"
        for key in ACTION_KEYS:
            if act.get(key) is None:
                continue
            arr, problem = self._ints(act[key], key)
            if problem is not None:
                return None, f"key {key!r} {problem}; expected {self.forms[key]}"
            out[key] = arr
        return out, None

    def _ints(self, value: Any, key: str) -> tuple[np.ndarray | None, str | None]:
        arr, problem = integer_array(value)
        if problem is not None:
            return None, problem
        if arr.shape != self.shape[key]:
            return None, f"has shape {arr.shape}, not {self.shape[key]}"
        if (arr < 0).any():
            return None, f"holds a negative number at {tuple(int(v) for v in np.argwhere(arr < 0)[0])}"
        if (arr > self.high[key]).any():
            where = tuple(int(v) for v in np.argwhere(arr > self.high[key])[0])
            return None, f"holds {arr[where]} at {where}, above {self.high[key]}"
        return arr.astype(np.int64), None

    def decision(self, arrays: dict[str, np.ndarray], jobs: np.ndarray) -> tuple[GeoDecision | None, str | None]:
        """The decision of well-formed `arrays` for the window rows `jobs` (-1 = empty row), or
        (None, why) when it places or moves an empty row. The engine checks the rest."""
        ps, workers, moves = arrays["ps"], arrays["workers"], arrays["moves"]
        used = (ps > 0) | workers.any(axis=1) | moves.any(axis=(1, 2))
        empty = np.flatnonzero(used & (jobs < 0))
        if empty.size:
            return None, f"window row {int(empty[0])} holds no job, but the action places or moves it"
        placements = {int(jobs[w]): (int(ps[w]) - 1, workers[w].copy())
                      for w in np.flatnonzero((ps > 0) | workers.any(axis=1))}
        mv = tuple((int(jobs[w]), int(r), int(s), int(moves[w, r, s])) for w, r, s in np.argwhere(moves > 0))
        return GeoDecision(placements=placements, moves=mv), None



def action_from_decision(jobs: np.ndarray, decision: GeoDecision, scenario: GeoScenario) -> dict[str, np.ndarray]:
    """The Dict action of a `GeoDecision` for the window rows `jobs` (observation `job_id`): what a
    policy that decides on the engine (`agents.geo`) would give the env. A job of the decision that
    is not in the window raises ValueError (the env cannot express it)."""
    W, R = scenario.window, scenario.num_sites
    row = {int(j): w for w, j in enumerate(jobs) if j >= 0}
    act = {"ps": np.zeros(W, dtype=np.int64), "workers": np.zeros((W, R), dtype=np.int64),
           "moves": np.zeros((W, R, R), dtype=np.int64)}
    outside = [i for i in [*decision.placements, *(m[0] for m in decision.moves)] if i not in row]
    if outside:
        raise ValueError(f"job {outside[0]} is not in the window (rows hold jobs {sorted(row)})")
    for i, (ps, workers) in decision.placements.items():
        act["ps"][row[i]] = ps + 1 if ps != NO_SITE else 0
        act["workers"][row[i]] = workers
    for i, src, dst, n in decision.moves:
        act["moves"][row[i], src, dst] += n
    return act


class GeoSitesEnv(EdgeClusterEnv):
    """The geo env (see the module docstring). A subclass of `EdgeClusterEnv` only so that the edge
    env's entry point can give it; it shares none of the edge env's state."""

    metadata = {"name": "geo_sites_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, scenario: str | Path | GeoScenario = "geo-6", strict: bool = False,
                 render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use 'ansi' or None")
        self.scenario = scenario if isinstance(scenario, GeoScenario) else load_geo_scenario(scenario)
        self.engine = GeoEngine(self.scenario)
        self.strict = bool(strict)
        self.render_mode = render_mode
        self.possible_agents = [AGENT]
        self.agents: list[str] = []
        sc = self.scenario
        W, R = sc.window, sc.num_sites
        self._obs_space = observation_space(sc)
        self._act_space = spaces.Dict({
            "ps": spaces.MultiDiscrete(np.full(W, R + 1)),
            "workers": spaces.MultiDiscrete(np.full((W, R), sc.max_workers_per_site + 1)),
            "moves": spaces.MultiDiscrete(np.full((W, R, R), max_job_blocks(sc) + 1)),
        })
        self.state_space = spaces.Box(low=-np.inf, high=np.inf, shape=(R * sc.num_resources + W + 1,),
                                      dtype=np.float32)
        self._reader = GeoActionReader(sc)
        self._seed: int | None = None
        self._episode = 0
        self._obs: dict[str, np.ndarray] | None = None
        self._window = np.full(W, -1, dtype=np.int64)
        self.invalid_actions = 0
        self.last_problem: str | None = None
        self.last_cost = 0.0

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        elif self._seed is None:
            self._seed = int(np.random.SeedSequence().entropy % (2**31))
        # The first episode of reset(seed=s) has the jobs of seed s (`draw_jobs`), as every policy does.
        self.engine.reset(self._seed + EPISODE_STRIDE * self._episode)
        self._episode += 1
        self.invalid_actions, self.last_problem, self.last_cost = 0, None, 0.0
        self.agents = list(self.possible_agents)
        return self._observe(), self._infos()

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(actions, dict):
            raise GeoActionError(f"step() got {type(actions).__name__} {reprlib.repr(actions)}; expected a dict "
                                 f"{{{AGENT!r}: action}}")
        unknown = [a for a in actions if a != AGENT]
        if unknown:
            raise GeoActionError(f"step(): {', '.join(map(repr, unknown))} is not an agent of this env; its one "
                                 f"agent is {AGENT!r} (raised in strict and default mode alike)")
        decision, problem = self.decision_of(actions.get(AGENT))
        e = self.engine
        if problem is not None:
            if self.strict:
                raise GeoActionError(f"slot {e.slot}: {AGENT}: {problem}")
            self.invalid_actions += 1  # default mode: the whole decision is dropped, the slot runs empty
            decision = GeoDecision()
        self.last_problem = problem
        self.last_cost = e.step(decision)
        terminated, truncated = e.done and not e.truncated, e.truncated
        obs, infos = self._observe(), self._infos()
        rewards = {AGENT: -self.last_cost}
        terms, truncs = {AGENT: terminated}, {AGENT: truncated}
        if e.done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def decision_of(self, action: Any) -> tuple[GeoDecision | None, str | None]:
        """The `GeoDecision` of the scheduler's action now, or (None, why it is malformed or infeasible).
        Nothing changes: this is the whole check `step()` makes."""
        arrays, problem = self._reader.arrays(action)
        if problem is not None:
            return None, f"malformed action: {problem}"
        decision, problem = self._reader.decision(arrays, self._window)
        if problem is None:
            problem = self.engine.decision_problem(decision)
        return (None, problem) if problem is not None else (decision, None)

    def state(self) -> np.ndarray:
        """Global view for a centralised critic, one flat float32 vector: per site and resource the
        free share of the current placement, per window row the share of its passes left, the slot/100."""
        o = self._obs
        free = o["site_free"] / np.maximum(o["site_capacity"], 1)
        left = o["job_passes_left"].sum(axis=1) / np.maximum(o["job_passes_total"], 1)
        return np.concatenate([free.ravel(), left, [o["slot"][0] / 100.0]]).astype(np.float32)

    def render(self) -> str | None:
        if self.render_mode is None:
            return None
        return render_geo_ansi(self.engine, self._window)

    # ------------------------------------------------------------------ helpers
    def batched_observations(self) -> dict[str, np.ndarray]:
        """The last observation of the scheduler (there is one agent, so nothing to batch)."""
        return self._obs

    def _observe(self) -> dict[str, dict[str, np.ndarray]]:
        self._window = window_jobs(self.engine)
        self._obs = build_observation(self.engine, self._window)
        return {AGENT: self._obs} if self.agents else {}

    def _infos(self) -> dict[str, dict]:
        e = self.engine
        info = {"slot": e.slot, "invalid_actions": self.invalid_actions, "problem": self.last_problem,
                "slot_cost": self.last_cost, "total_cost": e.total_cost(),
                "latency_cost": float(e.latency_cost.sum()), "transfer_cost": float(e.transfer_cost.sum()),
                "exchange_cost": float(e.exchange_cost.sum())}
        return {a: dict(info) for a in self.agents}


def render_geo_ansi(engine: GeoEngine, jobs: np.ndarray) -> str:
    e = engine
    done = int((e.completion >= 0).sum())
    lines = [f"slot {e.slot} | pending {len(e.pending())} completed {done}/{e.J} | cost {e.total_cost():.1f}"]
    for i in jobs[jobs >= 0]:
        ps = "-" if e.ps_site[i] == NO_SITE else f"s{e.ps_site[i]}"
        workers = " ".join(f"s{r}x{n}" for r, n in enumerate(e.workers[i]) if n) or "-"
        left = "/".join(str(v) for v in e.passes_left[i])
        lines.append(f"  job {i} wait {e.slot - e.arrival[i]} passes left {left} | PS {ps} workers {workers}")
    return "\n".join(lines)


def parallel_env(scenario: Any = "geo-6", **kwargs: Any) -> GeoSitesEnv:
    """The geo ParallelEnv (`scenario`: a geo built-in name, a TOML path or a GeoScenario)."""
    return GeoSitesEnv(scenario, **kwargs)


def env(scenario: Any = "geo-6", **kwargs: Any) -> pettingzoo.AECEnv:
    """The geo env as an AECEnv (one agent, so one step per slot there too)."""
    return parallel_to_aec(parallel_env(scenario, **kwargs))
