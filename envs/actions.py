"""The actions of one round for all agents, in the engine's conventions, and the one place that
plays them on the engine.

Every driver of an episode (the PettingZoo `step()`, `envs.episode.run_episode`) turns what it is
given into a `RoundActions` and calls `RoundActions.play`, so the engine's round step has a single
caller outside the engine.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tapfinger.sim.engine import Engine, InvalidActionError


@dataclass
class RoundActions:
    """task[i] = window place or -1 (do nothing); node[i] = local node; alloc[i] = amount per
    resource; realloc[i, k] = new allocation of running place k, -1 = keep (None when nobody
    preempts); decline[i] = window place to decline or -1 (None when nobody declines)."""

    task: np.ndarray  # [N] int
    node: np.ndarray  # [N] int
    alloc: np.ndarray  # [N, R] int
    realloc: np.ndarray | None = None  # [N, M, R] int
    decline: np.ndarray | None = None  # [N] int

    @classmethod
    def nothing(cls, num_agents: int, num_resources: int) -> RoundActions:
        return cls(np.full(num_agents, -1, dtype=np.int64), np.zeros(num_agents, dtype=np.int64),
                   np.zeros((num_agents, num_resources), dtype=np.int64))

    def play(self, engine: Engine, agent_names: list[str] | None = None) -> bool:
        """Play this round on the engine; True if it ended the slot. A strict engine has the whole
        round checked first, so an invalid action of any agent raises `InvalidActionError` before
        anything of the round is applied (the engine alone would raise half-way through)."""
        if engine.strict:
            found = round_problem(engine, self)
            if found is not None:
                i, problem = found
                raise InvalidActionError(f"agent {agent_names[i] if agent_names else i}: {problem}")
        return engine.play_round(self.task, self.node, self.alloc, self.realloc, self.decline)

    def decline_place(self, agent: int, place: int) -> None:
        """Have `agent` decline window place `place` this round (admission control)."""
        if self.decline is None:
            self.decline = np.full(self.task.shape[0], -1, dtype=np.int64)
        self.decline[agent] = place


ACTION_KEYS = ("task", "node", "alloc", "realloc", "decline")
_FAST_KEYS = frozenset(ACTION_KEYS[:3])


class _Malformed(Exception):
    """One agent's action lies outside its action space: where, what is wrong, the expected form."""


class EnvActionReader:
    """Reads the PettingZoo action format (see `envs.edge_cluster`) into a `RoundActions`.

    An action is well-formed when it lies in the agent's action space: integers (numpy or Python;
    a float only when it is an exact integer), never booleans, strings or nested lists, of the
    declared shape and within 0..the space's upper bound. Nothing is truncated, wrapped or read
    as "do nothing": task 0 and realloc 0 are the only do-nothing encodings. Whether a
    well-formed action is feasible (the masks) is the engine's question."""

    def __init__(self, engine: Engine, agents: list[str], resources: tuple[str, ...]):
        self.agents, self.index = list(agents), {a: i for i, a in enumerate(agents)}
        self.N, self.R, self.M, self.W = engine.N, engine.R, engine.M, engine.W
        self.max_node = int(engine.static.max_nodes) - 1
        self.grid = engine.static.grid_max.astype(np.int64)
        self.grid_u = self.grid.astype(np.uint64)
        self.alloc_shape = (self.R,)
        res = ", ".join(f"{r} 0..{g}" for r, g in zip(resources, self.grid))
        res_keep = ", ".join(f"{r} 0..{g + 1}" for r, g in zip(resources, self.grid))
        self.array_high = np.concatenate([[self.W, self.max_node], self.grid])
        self.array_names = ("task", "node", *resources)
        self.forms = {
            "task": f"an integer 0..{self.W} (0 = do nothing, i = start window place i-1)",
            "node": f"an integer 0..{self.max_node} (a node of the agent's cluster)",
            "alloc": f"{self.R} integers [{res}] (the amount of each resource)",
            "decline": f"an integer 0..{self.W} (0 = decline nothing, i = decline window place i-1)",
            "realloc": f"an [{self.M}, {self.R}] integer array, one row [{res_keep}] per running place (a row of "
                       f"0 keeps that task, otherwise each entry k sets that resource to k-1)",
            "array": f"{2 + self.R} integers [task 0..{self.W}, node 0..{self.max_node}, {res}]",
        }

    def read(self, actions: dict[str, Any]) -> tuple[RoundActions, dict[int, str]]:
        """The round's actions, and per agent whose action is malformed why (it does nothing).
        A key that is no agent raises `InvalidActionError`: there is no agent to count it against."""
        if not isinstance(actions, dict):
            raise InvalidActionError(f"step() got {type(actions).__name__} {reprlib.repr(actions)}; expected a dict "
                                     f"of agent name -> action, e.g. {{{self.agents[0]!r}: {{'task': 0}}}}")
        if not actions.keys() <= self.index.keys():
            unknown = [a for a in actions if a not in self.index]
            raise InvalidActionError(
                f"step(): {', '.join(map(repr, unknown))} is not an agent of this env; expected agent names "
                f"{', '.join(self.agents)} (raised in strict and default mode alike)")
        out = RoundActions.nothing(self.N, self.R)
        malformed: dict[int, str] = {}
        fast: list[int] = []
        for agent, act in actions.items():
            if act is None:
                continue
            i = self.index[agent]
            if type(act) is dict and self._fast(act, i, out):
                fast.append(i)
                continue
            try:
                t, n, a, re, d = self._read_one(act)
            except _Malformed as exc:
                malformed[i] = f"agent {agent}: {exc}"
                continue
            out.task[i], out.node[i] = t - 1, n
            if d:
                out.decline_place(i, d - 1)
            if a is not None:
                out.alloc[i] = a
            if re is not None and re.any():
                if out.realloc is None:
                    out.realloc = np.full((self.N, self.M, self.R), -1, dtype=np.int64)
                out.realloc[i] = re - 1
        # The fast path's allocations, range-checked together in one comparison: as unsigned
        # integers a negative amount is above every grid maximum (the other rows are in range).
        if fast and (out.alloc.view(np.uint64) > self.grid_u).any():
            rows = out.alloc.view(np.uint64) > self.grid_u
            for i in [i for i in fast if rows[i].any()]:
                out.task[i], out.node[i], out.alloc[i] = -1, 0, 0
                try:
                    self._read_one(actions[self.agents[i]])
                except _Malformed as exc:  # always: the full reading names what is wrong
                    malformed[int(i)] = f"agent {self.agents[i]}: {exc}"
        return out, malformed

    def _fast(self, act: dict, i: int, out: RoundActions) -> bool:
        """The common well-formed action, {task, node, alloc} as ints and an integer array,
        written into `out` without per-agent numpy checks (the allocation's range is checked
        for all such agents at once by `read`); False for anything else, which `_read_one` reads."""
        if not act.keys() <= _FAST_KEYS:
            return False
        t, n, a = act.get("task", 0), act.get("node", 0), act.get("alloc")
        if not ((type(t) is int or isinstance(t, np.integer)) and (type(n) is int or isinstance(n, np.integer))
                and 0 <= t <= self.W and 0 <= n <= self.max_node):
            return False
        if a is not None:
            if type(a) is not np.ndarray or a.dtype.kind not in "iu" or a.shape != self.alloc_shape:
                return False
            out.alloc[i] = a  # a uint64 above the int64 range turns negative here: caught by the range check
        out.task[i], out.node[i] = t - 1, n
        return True

    def _read_one(self, act: Any) -> tuple[int, int, np.ndarray | None, np.ndarray | None, int]:
        if not isinstance(act, dict):
            arr = self._ints(act, (2 + self.R,), self.array_high, "array action", "array")
            return int(arr[0]), int(arr[1]), arr[2:], None, 0
        for key in act:
            if key not in ACTION_KEYS:
                raise _Malformed(f"key {key!r} is not an action key; expected the keys {', '.join(ACTION_KEYS)}")
        t, n, a, re, d = (act.get(k) for k in ACTION_KEYS)
        task = 0 if t is None else self._scalar(t, self.W, "task")
        decline = 0 if d is None else self._scalar(d, self.W, "decline")
        node = 0 if n is None else self._scalar(n, self.max_node, "node")
        alloc = None if a is None else self._ints(a, (self.R,), self.grid, "key 'alloc'", "alloc")
        realloc = None if re is None else self._ints(re, (self.M, self.R), self.grid + 1, "key 'realloc'", "realloc")
        return task, node, alloc, realloc, decline

    def _scalar(self, value: Any, high: int, key: str) -> int:
        if type(value) is int or isinstance(value, np.integer):  # the common case, without numpy
            if 0 <= value <= high:
                return int(value)
            self._out_of_range(f"key {key!r}", value, high, key)
        return int(self._ints(value, (), np.int64(high), f"key {key!r}", key))

    def _ints(self, value: Any, shape: tuple[int, ...], high: np.ndarray, where: str, form: str) -> np.ndarray:
        """`value` as an int64 array of `shape` with entries in 0..high, or `_Malformed`."""
        arr, problem = integer_array(value)
        if problem is not None:
            self._bad(where, problem, form)
        if arr.shape != shape:
            if form == "array":
                self._bad(where, f"must have {2 + self.R} entries [task, node, {', '.join(self.array_names[2:])}], "
                                 f"got {arr.size} in shape {arr.shape}", form)
            self._bad(where, f"has shape {arr.shape}, not {shape}", form)
        bad = (arr < 0) | (arr > high)
        if bad.any():
            j = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
            self._out_of_range(where + self._entry(form, j), arr[j], np.broadcast_to(high, shape)[j], form)
        return arr.astype(np.int64)

    def _entry(self, form: str, j: tuple) -> str:
        """Which entry of an array-valued action is out of range, in words."""
        if form == "array":
            return f" entry {self.array_names[j[0]]!r}"
        if form == "alloc":
            return f" entry {self.array_names[2 + j[0]]!r}"
        if form == "realloc":
            return f" row {j[0]} entry {self.array_names[2 + j[1]]!r}"
        return ""

    def _out_of_range(self, where: str, value: Any, high: Any, form: str) -> None:
        problem = "negative" if value < 0 else f"above {high}"
        self._bad(where, f"is {value} ({problem})", form)

    def _bad(self, where: str, problem: str, form: str) -> None:
        raise _Malformed(f"{where} {problem}; expected {self.forms[form]}")


def integer_array(value: Any) -> tuple[np.ndarray | None, str | None]:
    """`value` as a numpy array of whole numbers, or (None, what is wrong with it): a string, booleans
    (numpy would read True as 1), ragged nesting, a non-finite or fractional number (never
    truncated), or values of another kind. Shape and range are the caller's (the edge and geo
    action readers both start here)."""
    if isinstance(value, (str, bytes)):
        return None, f"is the string {reprlib.repr(value)}"
    if isinstance(value, (list, tuple)) and _holds_bool(value):
        return None, f"holds booleans: {reprlib.repr(value)}"
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged nesting
        return None, f"is a ragged {type(value).__name__} {reprlib.repr(value)}"
    kind = arr.dtype.kind
    if kind == "f":
        if not np.isfinite(arr).all():
            return None, f"holds a non-finite number: {reprlib.repr(value)}"
        if (arr != np.trunc(arr)).any():
            return None, f"holds a fractional number (never truncated): {reprlib.repr(value)}"
    elif kind not in "iu":  # booleans, strings, objects (2**70, None, mixed lists)
        what = {"b": "booleans", "O": "values that are no 64-bit integers"}.get(kind, f"{arr.dtype} values")
        return None, f"holds {what}: {reprlib.repr(value)}"
    return arr, None


def _holds_bool(value: list | tuple) -> bool:
    return any(isinstance(v, (bool, np.bool_)) or (isinstance(v, (list, tuple)) and _holds_bool(v)) for v in value)


def round_problem(engine: Engine, act: RoundActions) -> tuple[int, str] | None:
    """(agent, why) for the first action `engine.play_round` would reject, or None; the engine
    is left as it was. It follows play_round's order: agents by index, each its re-allocation then
    its start; a task taken by a lower agent this round is a conflict, not a problem. An agent's
    actions touch only its own cluster's nodes and running list, so the state each check needs is
    the state before the round plus that agent's own re-allocation."""
    claimed: set[int] = set()
    for i in range(engine.N):
        free = None
        if act.realloc is not None and np.any(act.realloc[i] >= 0):
            problem = engine.realloc_problem(i, act.realloc[i])
            if problem is not None:
                return i, problem
            free = _free_after_realloc(engine, i, act.realloc[i])
        pos = int(act.task[i])
        if pos >= 0:
            t = int(engine.window[i, pos]) if pos < engine.W else engine.empty
            if t == engine.empty or t not in claimed:
                problem = _start_problem(engine, i, pos, int(act.node[i]), act.alloc[i], free)
                if problem is not None:
                    return i, problem
                claimed.add(t)
        dpos = -1 if act.decline is None else int(act.decline[i])
        if dpos >= 0:
            t = int(engine.window[i, dpos]) if dpos < engine.W else engine.empty
            if dpos == pos:
                return i, f"window place {dpos} is both started and declined"
            if t != engine.empty and t in claimed:
                continue
            problem = engine.decline_problem(i, dpos)
            if problem is not None:
                return i, problem
            claimed.add(t)
    return None


def _free_after_realloc(engine: Engine, agent: int, realloc: np.ndarray) -> np.ndarray:
    free = engine.node_free.copy()
    for k in np.flatnonzero((realloc >= 0).any(axis=1)):
        t = engine.running[agent, k]
        free[engine.node[t]] += engine.alloc[t] - realloc[k]
    return free


def _start_problem(engine: Engine, agent: int, pos: int, node: int, alloc: np.ndarray,
                   free: np.ndarray | None) -> str | None:
    if free is None:
        return engine.start_problem(agent, pos, node, alloc)
    # start_problem reads the engine's node_free; show it the free after this agent's own
    # re-allocation, which play_round applies before the start, and put the real one back.
    real = engine.node_free
    engine.node_free = free
    try:
        return engine.start_problem(agent, pos, node, alloc)
    finally:
        engine.node_free = real


def random_start(obs: dict[str, np.ndarray], i: int, rng: np.random.Generator,
                 p_pass: float | None = None) -> tuple[int, int, np.ndarray] | None:
    """A random action of agent i that the masks allow: (window place, node, allocation), or None
    to pass. With `p_pass` None, uniform over the task mask's choices ("do nothing" included);
    otherwise it passes with probability `p_pass` and starts a uniformly random startable task.
    The node is uniform among those that fit, each resource uniform in its mask interval."""
    if p_pass is None:
        pick = int(rng.choice(np.flatnonzero(obs["task_mask"][i])))
        if pick == 0:
            return None
        place = pick - 1
    else:
        places = np.flatnonzero(obs["task_mask"][i, 1:])
        if not places.size or rng.random() < p_pass:
            return None
        place = int(places[rng.integers(places.size)])
    nodes = np.flatnonzero(obs["node_mask"][i, place])
    n = int(nodes[rng.integers(nodes.size)])
    return place, n, rng.integers(obs["alloc_low"][i, place], obs["alloc_high"][i, n] + 1)


def random_feasible(obs: dict[str, np.ndarray], rng: np.random.Generator,
                    p_pass: float | None = None) -> RoundActions:
    """`random_start` for every agent of the batched observations (for tests and benchmarks)."""
    N = obs["window_id"].shape[0]
    out = RoundActions.nothing(N, obs["alloc_low"].shape[2])
    for i in range(N):
        start = random_start(obs, i, rng, p_pass)
        if start is not None:
            out.task[i], out.node[i], out.alloc[i] = start
    return out
