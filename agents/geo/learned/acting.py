"""How `tapfinger-geo` turns one slot into a `GeoDecision`, and how the same choices are scored again.

Decode order (a rule): the window jobs that the teacher (okita) places, in okita's plan order (its
priority), then the other window jobs in window order (oldest first). For each job the PS head
picks "do not run" or a site where the PS fits what the jobs before it left free; then the workers
head picks each site's workers among those that still fit there (once the PS is placed). Every
sampled decision is therefore valid by construction (`GeoEngine.decision_problem` is None), and
each choice is recorded with the masks and inputs it was made under, so that `score_slots`
recomputes exactly the log-probability collection recorded.

Data moves (a rule, not learned): a job placed exactly as okita proposes moves the blocks okita
moves for it (clipped to the links' megabytes still left); any other placed job moves its untouched
blocks off the sites without its workers with `agents.geo.placement.greedy_moves` (cheapest link
first, first filling what each worker site can train in the job's estimated remaining slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from agents.geo.okita import move_spare
from agents.geo.placement import SlotPlan, greedy_moves, job_view, room
from agents.geo.learned.model import GeoNet, collate
from envs.geo_graph import graph_arrays
from envs.geo_observations import build_observation, window_jobs
from tapfinger.sim.geo.engine import NO_SITE, GeoDecision, GeoEngine

STEP_KEYS = ("job", "ps_mask", "free", "ps", "free_after", "wmask", "workers", "hint_ps", "hint_workers")


@dataclass
class SlotInputs:
    jobs: np.ndarray  # [W] window rows' job ids (-1 = empty)
    obs: dict
    arrays: dict  # envs.geo_graph.graph_arrays
    globals_x: np.ndarray  # [GLOBAL_FEATURES]
    hint: GeoDecision | None  # the teacher's decision this slot


@dataclass
class SlotRecord:
    """One decided slot: the graph, the per-job steps (STEP_KEYS, stacked), what was recorded."""

    arrays: dict
    globals_x: np.ndarray
    steps: dict
    logp: float
    value: float
    slot: int
    cost: float = 0.0


def slot_globals(engine: GeoEngine) -> np.ndarray:
    sc = engine.scenario
    return np.array([engine.slot / max(sc.jobs.arrival_slots, 1), len(engine.pending()) / sc.window],
                    dtype=np.float32)


def slot_inputs(engine: GeoEngine, teacher) -> SlotInputs | None:
    """The slot's observation and graph (None when no job is pending: nothing to decide)."""
    jobs = window_jobs(engine)
    if not np.any(jobs >= 0):
        return None
    obs = build_observation(engine, jobs)
    hint = teacher.decide(engine) if teacher is not None else None
    return SlotInputs(jobs, obs, graph_arrays(obs, engine.scenario), slot_globals(engine), hint)


def decode_order(jobs: np.ndarray, hint: GeoDecision | None) -> list[int]:
    rows = {int(j): w for w, j in enumerate(jobs) if j >= 0}
    first = [rows[i] for i in (hint.placements if hint is not None else {}) if i in rows]
    return first + [w for w in rows.values() if w not in first]


def _hint_of(hint: GeoDecision | None, i: int, R: int) -> tuple[int, np.ndarray]:
    """The teacher's (PS option 0..R, workers [R]) for job i: option 0 = it does not run."""
    if hint is None or i not in hint.placements:
        return 0, np.zeros(R, dtype=np.int64)
    ps, workers = hint.placements[i]
    return (ps + 1 if ps != NO_SITE else 0), np.asarray(workers, dtype=np.int64)


def _choose(logits: torch.Tensor, mode: str, gen: torch.Generator | None, label) -> torch.Tensor:
    """[..., n] logits -> [...] choices: the label, the argmax, or a sample."""
    if mode == "label":
        return torch.as_tensor(label, dtype=torch.long).reshape(logits.shape[:-1])
    if mode == "greedy":
        return logits.argmax(dim=-1)
    probs = F.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs, 1, generator=gen).reshape(logits.shape[:-1])


def decode(net: GeoNet, engine: GeoEngine, inp: SlotInputs, mode: str = "sample",
           gen: torch.Generator | None = None) -> tuple[GeoDecision, SlotRecord]:
    """The slot's decision (`mode`: sample, greedy, or label = the teacher's choices) and its record."""
    R, M = engine.R, engine.scenario.max_workers_per_site
    inv = 1.0 / np.maximum(engine.capacity.max(axis=0), 1)
    with torch.no_grad():
        enc = net.encode(collate([inp.arrays], [inp.globals_x]))
        plan, steps, logp = SlotPlan(engine), {k: [] for k in STEP_KEYS}, 0.0
        g0 = torch.zeros(1, dtype=torch.long)
        hint_on = net.hint_weight is not None
        for row in decode_order(inp.jobs, inp.hint):
            i = int(inp.jobs[row])
            hps, hw = _hint_of(inp.hint, i, R)
            if mode == "label" and inp.hint is None:
                raise ValueError("label mode needs the teacher's decision (slot_inputs with a teacher)")
            ps_mask = inp.obs["ps_mask"][row].astype(bool)
            ps_mask[1:] &= np.all(plan.free >= engine.ps_need[i], axis=1)
            free = (plan.free * inv).astype(np.float32)
            t_job = torch.tensor([row])
            t_hps = torch.tensor([hps]) if hint_on else None
            pl = net.ps_logits(enc, g0, t_job, torch.from_numpy(free)[None], torch.from_numpy(ps_mask)[None], t_hps)
            ps = int(_choose(pl, mode, gen, hps)[0])
            _check_label(mode, ps_mask[ps], i, "PS option", ps)
            left = plan.free.copy()
            if ps > 0:
                left[ps - 1] -= engine.ps_need[i]
            fit = room(left, engine.worker_need[i], M) if ps > 0 else np.zeros(R, dtype=np.int64)
            wmask = np.arange(M + 1)[None, :] <= fit[:, None]
            free_after = (left * inv).astype(np.float32)
            wl = net.worker_logits(enc, g0, t_job, torch.tensor([ps]), torch.from_numpy(free_after)[None],
                                   torch.from_numpy(wmask)[None], t_hps, torch.from_numpy(hw)[None] if hint_on else None)
            workers = _choose(wl, mode, gen, hw)[0].numpy().astype(np.int64)
            _check_label(mode, bool(np.all(workers <= fit)), i, "workers", workers)
            logp += float(F.log_softmax(pl, -1)[0, ps] + F.log_softmax(wl, -1)[0].gather(
                1, torch.from_numpy(workers)[:, None]).sum())
            for k, v in zip(STEP_KEYS, (row, ps_mask, free, ps, free_after, wmask, workers, hps, hw)):
                steps[k].append(v)
            if ps > 0:
                _place(plan, engine, inp.hint, i, ps - 1, workers, hps == ps and np.array_equal(hw, workers))
    record = SlotRecord(inp.arrays, inp.globals_x, {k: np.stack([np.asarray(v) for v in vs]) for k, vs in steps.items()},
                        logp, float(enc["value"][0]), engine.slot)
    return plan.decision(), record


def _check_label(mode: str, ok: bool, i: int, what: str, value) -> None:
    if mode == "label" and not ok:
        raise AssertionError(f"the teacher's {what} {value!r} for job {i} is outside the decode masks: the "
                             f"decode order must keep every teacher decision feasible")


def _place(plan: SlotPlan, engine: GeoEngine, hint: GeoDecision | None, i: int, ps: int, workers: np.ndarray,
           follows: bool) -> None:
    """Place the job and move its data by the rule of the module docstring."""
    plan.place(i, ps, workers)
    view = job_view(engine, i)
    if follows and hint is not None:
        left = view.movable.copy()
        for j, s, d, n in hint.moves:
            if j != i:
                continue
            left[s] -= plan.move(i, s, d, min(int(n), int(left[s])), view.block_mb)  # clipped to the link
        return
    if workers.sum() > 0:
        slots = max(1, -(-view.total // (view.rate * int(workers.sum()))))
        greedy_moves(plan, view, workers > 0, spare=move_spare(view, workers, slots))


def score_slots(net: GeoNet, records: list[SlotRecord], device: torch.device | str = "cpu"):
    """Per record, under the current weights: (log-probability of its recorded choices [N], their
    entropy [N] (summed over its jobs and sites), the critic's value [N])."""
    batch = collate([r.arrays for r in records], [r.globals_x for r in records], device)
    enc = net.encode(batch)
    counts = torch.tensor([len(r.steps["ps"]) for r in records])
    owner = torch.repeat_interleave(torch.arange(len(records)), counts).to(device)
    s = {k: torch.from_numpy(np.concatenate([r.steps[k] for r in records])).to(device) for k in STEP_KEYS}
    job = batch.job_offset[owner] + s["job"]
    hint_on = net.hint_weight is not None
    pl = net.ps_logits(enc, owner, job, s["free"], s["ps_mask"], s["hint_ps"] if hint_on else None)
    wl = net.worker_logits(enc, owner, job, s["ps"], s["free_after"], s["wmask"], s["hint_ps"] if hint_on else None,
                           s["hint_workers"] if hint_on else None)
    lp_ps, lp_w = F.log_softmax(pl, -1), F.log_softmax(wl, -1)
    per_step = lp_ps.gather(1, s["ps"][:, None]).squeeze(1) + lp_w.gather(2, s["workers"][..., None]).sum((1, 2))
    ent_step = -(lp_ps.exp() * lp_ps).sum(-1) - (lp_w.exp() * lp_w).sum((1, 2))
    n = len(records)
    logp = torch.zeros(n, device=device).index_add_(0, owner, per_step)
    entropy = torch.zeros(n, device=device).index_add_(0, owner, ent_step)
    return logp, entropy, enc["value"]
