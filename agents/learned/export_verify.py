"""Checking an exported program against the eager model.

Choices are compared exactly: the eager model and the program apply the same greedy rule
(`agents.learned.actor.greedy_pick`: the lowest index among choices within 1e-3 of the best
logit), so twins that the runtimes score 1e-7 apart are picked alike. Logits are compared
within 1e-4. A declining network's decline choices are part of its task choice, and its
"decline" output is compared like the place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agents.export_format import GRAPH_INPUTS, HINT_INPUTS, ExportError, decision_feeds, graph_feeds, output_names
from agents.exported import open_runner  # the runtime itself runs the written file
from agents.learned.acting import round_arrays
from agents.learned.actor import choice_index, decide, greedy_pick
from agents.learned.batch import collate
from agents.learned.masks import MASK_KEYS, can_decide, decision_masks
from agents.learned.model import TapFingerNet
from tapfinger.sim.scenario import Scenario


@torch.no_grad()
def eager_outputs(net: TapFingerNet, arrays: dict[str, np.ndarray], agents: list[int],
                  masks: list[dict[str, np.ndarray]], pointer: bool = True) -> list[np.ndarray]:
    """What the eager model (PyG encoder, `Planner`'s code path) outputs for the same inputs."""
    batch = collate([arrays])
    h = net.encode(batch)
    m = {k: torch.as_tensor(v) for k, v in decision_feeds(agents, masks).items() if k != "agent"}
    d = decide(net, h, batch, torch.as_tensor(agents, dtype=torch.long), m, deterministic=True, pointer=pointer)
    prob = d.task_probs[torch.arange(len(agents)), d.choice]
    extra = () if d.decline is None else (d.decline,)  # a declining network's DECLINE_OUTPUTS
    return [t.numpy() for t in (d.place, d.node, d.alloc, d.task_logits, prob, *extra)]


def eager_outputs_for_feeds(net: TapFingerNet, feeds: dict[str, np.ndarray], pointer: bool = True
                            ) -> list[np.ndarray]:
    """`eager_outputs` for program inputs (e.g. `random_feeds`), through the model's own collate path."""
    arrays = {k: feeds[k] for k in GRAPH_INPUTS if k != "node_row"}
    arrays["node_id"] = feeds["node_row"]  # one round: node rows are global node ids
    arrays.update({k: feeds[k] for k in HINT_INPUTS if k in feeds})  # greedy's proposals, per cluster
    n = feeds["cluster_x"].shape[0]
    for k in MASK_KEYS:  # collate wants them; decide gets its own
        arrays[k] = np.zeros((n,) + feeds[k].shape[1:], dtype=np.int64)
    agents = feeds["agent"].tolist()
    masks = [{k: feeds[k][j] for k in MASK_KEYS} for j in range(len(agents))]
    return eager_outputs(net, arrays, agents, masks, pointer=pointer)


def compare_outputs(got: list[np.ndarray], want: list[np.ndarray], atol: float = 1e-4) -> str | None:
    """None if the greedy choices are equal and the logits close, else what differs. Node and
    allocation are compared where a task is started (for "do nothing" and declines they are unused)."""
    if len(got) != len(want):
        return f"outputs: exported {len(got)}, eager {len(want)}"
    started = want[0] >= 0
    for name, g, w in zip(output_names(len(want) > 5), got, want, strict=True):
        if name in ("node", "alloc"):
            g, w = g[started], w[started]
        if name in ("place", "node", "alloc", "decline"):
            if not np.array_equal(g, w):
                return f"{name}: exported {g.tolist()} vs eager {w.tolist()}"
        else:
            live = w > -1e8  # masked logits are -1e9 in both; compare the others
            if g.shape != w.shape or not np.allclose(np.where(live, g, 0), np.where(live, w, 0), atol=atol, rtol=1e-4):
                return f"{name}: max difference {np.abs(np.where(live, g - w, 0)).max():.3g}"
    return None


@torch.no_grad()
def greedy_mismatch(net: TapFingerNet, arrays: dict[str, np.ndarray], agents: list[int],
                    masks: list[dict[str, np.ndarray]], got: list[np.ndarray], pointer: bool = True
                    ) -> str | None:
    """None if every choice of the exported program (task, then node, then each amount) is the eager
    model's greedy pick (`greedy_pick`, the shared tie rule) given the program's earlier choices,
    and its task logits are close to the eager ones; else what differs."""
    batch = collate([arrays])
    h = net.encode(batch)
    rows = torch.as_tensor(agents, dtype=torch.long)
    m = {k: torch.as_tensor(v) for k, v in decision_feeds(agents, masks).items() if k != "agent"}
    place, node, alloc = (torch.as_tensor(a) for a in got[:3])
    if net.cfg.decline and len(got) < 6:
        return "the program of a declining network has no 'decline' output"
    decline = torch.as_tensor(got[5]) if net.cfg.decline else None
    ar = torch.arange(len(agents))
    started = place >= 0  # node and amounts of a "do nothing" choice or a decline are unused

    def not_greedy(logits: torch.Tensor, pick: torch.Tensor, what: str, only: torch.Tensor | None = None
                   ) -> str | None:
        want = greedy_pick(logits)
        bad = torch.nonzero((want != pick) if only is None else (want != pick) & only).flatten()
        if bad.numel():
            j = int(bad[0])
            return (f"{what} of agent {agents[j]}: exported choice {int(pick[j])} (eager logit "
                    f"{float(logits[j, pick[j]]):.6g}), the eager greedy pick is {int(want[j])} (logit "
                    f"{float(logits[j, want[j]]):.6g})")
        return None

    t_logits = net.task_logits(h, batch, rows, m["task_mask"], pointer=pointer)
    live = t_logits > -1e8
    got_logits = torch.as_tensor(got[3])
    if got_logits.shape != t_logits.shape or not torch.allclose(
            torch.where(live, got_logits, 0), torch.where(live, t_logits, 0), atol=1e-4, rtol=1e-4):
        return "task logits differ from the eager model's by more than 1e-4"
    problem = not_greedy(t_logits, choice_index(place, decline, m["node_mask"].shape[1]), "task")
    if problem:
        return problem
    at = place.clamp(min=0)
    problem = not_greedy(net.node_logits(h, batch, rows, at, m["node_mask"][ar, at]), node, "node", started)
    if problem:
        return problem
    z = net.alloc_context(h, batch, rows, at, node)
    low, high = m["alloc_low"][ar, at], m["alloc_high"][ar, node]
    hint = net.alloc_hint(batch, rows, at)
    for r in range(alloc.shape[1]):
        logits = net.alloc_logits(z, r, low[:, r], high[:, r], [alloc[:, q] for q in range(r)],
                                  None if hint is None else hint[:, r])
        problem = not_greedy(logits, alloc[:, r], f"amount of resource {r}", started)
        if problem:
            return problem
    return None


class _Enough(Exception):
    """Raised from `on_round` to end a sampling episode once enough rounds are recorded."""


def sample_rounds(scenario: Scenario, net: TapFingerNet, acting: dict, seed: int = 0, max_rounds: int = 40
                  ) -> list[dict[str, np.ndarray]]:
    """Observations of rounds (with deciding agents) of one greedy episode of the eager policy; with
    greedy hints, each round's dict also holds the planner's `HINT_INPUTS` of that round (greedy is
    stateful: they come from the episode's own GreedyPolicy, which saw every round before)."""
    from agents.learned.acting import ActingOptions
    from agents.learned.policy import Planner
    from envs.episode import RoundInfo, run_episode

    planner = Planner(net, scenario, ActingOptions(**acting))

    class Greedy:
        name = "tapfinger"

        def reset(self, seed: int) -> None:
            planner.reset()

        def act(self, obs: dict[str, np.ndarray]):
            return planner.act(obs, deterministic=True)[0]

    out: list[dict[str, np.ndarray]] = []

    def on_round(info: RoundInfo) -> None:
        if can_decide(info.obs, net.cfg.decline).any():
            out.append({**info.obs, **planner.hints(info.obs)})  # the hints greedy made for this round
        if len(out) >= max_rounds:
            raise _Enough  # the one episode loop has no stop condition of its own

    try:
        run_episode(scenario, Greedy(), seed, on_round=on_round)
    except _Enough:
        pass
    return out


def verify_export(path: Path, fmt: str, scenario: Scenario, net: TapFingerNet, acting: dict,
                  rounds: list[dict[str, np.ndarray]]) -> int:
    """Run the written file through `agents.exported` on real rounds (`sample_rounds`: sizes vary
    from round to round) and compare with the eager model; returns the number of rounds checked."""
    runner = open_runner(path, fmt, scenario)
    pointer = bool(acting.get("pointer", True))
    for r, obs in enumerate(rounds):
        agents = [int(i) for i in np.flatnonzero(can_decide(obs, net.cfg.decline))]
        stacked = decision_masks(obs, np.asarray(agents, dtype=np.int64), net.cfg.decline)
        masks = [{k: stacked[k][j] for k in MASK_KEYS} for j in range(len(agents))]
        hints = {k: obs[k] for k in HINT_INPUTS if k in obs}  # sample_rounds keeps them with the round
        faults = net.cfg.node_faults
        got = runner.run({**graph_feeds(obs, scenario, faults), **hints, **decision_feeds(agents, masks)})
        problem = greedy_mismatch(net, {**round_arrays(obs, scenario, faults), **hints}, agents, masks, got,
                                  pointer=pointer)
        if problem:
            raise ExportError(f"the exported {fmt} program differs from the eager model on round {r} of a "
                              f"verification episode ({problem}). Fix: report it with the checkpoint; use the "
                              f"checkpoint itself (policy `tapfinger`) meanwhile.")
    return len(rounds)
