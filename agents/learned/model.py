"""TapFinger's actor-critic: a heterogeneous graph-attention encoder, a pointer over each agent's
window (plus "do nothing"), then node and per-resource allocation heads conditioned on the chosen
task, all masked to feasible values; and a centralised critic over the global graph.

log π(action) = log π(task) + log π(node | task) + Σ_r log π(alloc_r | task, node, alloc_<r).

With `separate_critic` the critic has its own encoder: the actor's and the critic's gradients then
touch disjoint parameters (the PPO update clips and reports each group's norm on its own), so a
large value loss cannot swamp the policy gradient in the shared layers.

With `greedy_hint` the `greedy` heuristic's proposal for each agent (`agents.learned.acting.HINT_KEYS`:
its task choice, node and amounts) is an input, and each head adds a learned weight times that
proposal's one-hot to its logits (`TapFingerNet.hint_weight`), so that the network can copy
greedy, or learn where to deviate from it, instead of re-learning greedy's planning from the graph.

With `decline` (admission control, scenarios with `allow_decline`) the task choice widens from
W+1 to 2W+1: 0 = do nothing, 1..W = start window place i-1, W+1..2W = decline window place i-W-1.
The decline logits come from their own head (`decline_head`) on [agent context, task embedding],
with the bias `DECLINE_INIT`. A decline has no node or allocation: its log-probability is that
of the task choice alone.

With `node_faults` (scenarios with `[faults]`) the graph's node and cluster vertices carry the
node-health columns (`envs.graph.NODE_FAULT_COLUMNS`: each node's health and current speed, each
cluster's share of nodes up and their mean speed): only the input widths of the encoders change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATv2Conv, HeteroConv
from torch_geometric.utils import scatter

from agents.learned.batch import GraphBatch
from envs.graph import EDGE_TYPES, VERTEX_TYPES, feature_dims
from tapfinger.sim.scenario import Scenario

PROGRESS_FEATURES = 2  # EpisodeRun.progress_features: tasks yet to arrive, tasks in the system
NEG = -1e9  # masked logit; finite so that fully-masked rows never produce NaN
# The starting weight of greedy's proposal in each head's logits (greedy_hint). Measured on
# edge-default (3 untrained networks, greedy's states): at 3 the network's greedy choice is
# greedy's in every decision the liveness rule allows, at 2 in 86% of them, at 1 in 66%; so a
# greedy play of the untrained network is about greedy's episode, while sampling still explores:
# with ten feasible choices, greedy's gets e^3 / (e^3 + 9) = 0.69 of the probability.
HINT_INIT = 3.0
# The starting bias of the decline head (decline): an untrained or freshly cloned policy should
# almost never decline, because a decline is irreversible and always a deadline miss, while a
# wrong start or pass costs a slot at most. At -4, next to a start logit near 0, a decline gets
# e^-4 = 1.8% of a start's probability: greedy play never declines until training raised the
# head's output by about 4, and sampling still tries a decline now and then, so PPO with a miss
# penalty (--miss-penalty) finds the states where declining pays (a hopeless task that would
# otherwise hold resources others need to meet their deadlines).
DECLINE_INIT = -4.0


@dataclass
class ModelConfig:
    num_types: int
    num_resources: int
    grid_max: list[int]
    max_nodes: int
    window: int
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    encoder: str = "graph"  # "graph", or "mlp" for the no-graph ablation
    separate_critic: bool = False  # the critic's own encoder (False: shared with the actor)
    critic_progress: bool = False  # the critic also sees the episode's progress (EpisodeRun.progress_features)
    greedy_hint: bool = False  # greedy's proposal is an input, added to every head's logits (hint_weight)
    hint_policy: str = "greedy"  # the heuristic that makes that proposal (a registry name; older checkpoints: greedy)
    decline: bool = False  # the task choice also offers "decline window place i" (decline_head)
    node_faults: bool = False  # node and cluster features include node health and speed (envs.graph)

    @classmethod
    def for_scenario(cls, scenario: Scenario, **kw) -> "ModelConfig":
        return cls(num_types=len(scenario.task_types), num_resources=scenario.num_resources,
                   grid_max=list(scenario.grid_max), max_nodes=max(len(c.nodes) for c in scenario.clusters),
                   window=scenario.window_size, **kw)

    def feature_dims(self) -> dict[str, int]:
        """The input width of each vertex type (`envs.graph.feature_dims`, the graph layout's home)."""
        return feature_dims(self.num_types, self.num_resources, self.node_faults)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.hidden
        self.cfg = cfg
        self.inp = nn.ModuleDict({k: nn.Linear(d, H) for k, d in cfg.feature_dims().items()})
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        if cfg.encoder == "graph":
            for _ in range(cfg.layers):
                # Bipartite edges: no self loops; the skip connection below keeps a vertex's own state.
                self.convs.append(HeteroConv({et: GATv2Conv((H, H), H // cfg.heads, heads=cfg.heads,
                                                            add_self_loops=False) for et in EDGE_TYPES},
                                             aggr="sum"))
                self.norms.append(nn.ModuleDict({k: nn.LayerNorm(H) for k in VERTEX_TYPES}))
        elif cfg.encoder != "mlp":
            raise ValueError(f"unknown encoder {cfg.encoder!r}; use 'graph' or 'mlp'")
        self.post = nn.ModuleDict({k: nn.Linear(H, H) for k in VERTEX_TYPES}) if cfg.encoder == "mlp" else None

    def forward(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        h = {k: F.relu(self.inp[k](batch.x[k])) for k in VERTEX_TYPES}
        if self.post is not None:
            return {k: F.relu(self.post[k](v)) for k, v in h.items()}
        edges = {et: e for et, e in batch.edges.items() if e.numel()}
        for conv, norm in zip(self.convs, self.norms):
            present = {k: v for k, v in h.items() if v.shape[0]}
            out = conv(present, {et: e for et, e in edges.items() if et[0] in present and et[2] in present})
            h = {k: norm[k](v + F.relu(out[k])) if k in out else v for k, v in h.items()}
        return h


class TapFingerNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.hidden
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.ctx = mlp(2 * H, H, H)
        self.q = nn.Linear(H, H, bias=False)
        self.k = nn.Linear(H, H, bias=False)
        self.v = nn.Linear(H, 1, bias=False)
        self.none_head = mlp(H, H, 1)
        self.node_head = mlp(3 * H, H, 1)
        self.alloc_in = mlp(3 * H, H, H)
        self.alloc_heads = nn.ModuleList([nn.Linear(H, g + 1) for g in cfg.grid_max])
        self.alloc_embed = nn.ModuleList([nn.Embedding(g + 1, H) for g in cfg.grid_max])
        self.critic = mlp(2 * H + (PROGRESS_FEATURES if cfg.critic_progress else 0), H, 1)
        self.critic_encoder = Encoder(cfg) if cfg.separate_critic else None
        # greedy_hint: one weight per head (task, node, then each resource), times the one-hot of
        # greedy's proposal, added to the head's logits. The simplest design with both properties
        # asked of it: at initialisation the policy is the untrained (near-uniform) one tilted
        # towards greedy by HINT_INIT; and behaviour cloning of greedy lowers its loss by raising
        # the hinted logit above the others, which the weight and the head's own scores both do,
        # without bound, so the clone's argmax becomes greedy's choice (its own scores learn where
        # greedy's choice is not the best after PPO). The node and allocation terms apply only when
        # the chosen task is greedy's (the proposal is greedy's plan for that task); a network
        # without the option has no such parameter, so older checkpoints load unchanged.
        self.hint_weight = nn.Parameter(torch.full((2 + cfg.num_resources,), HINT_INIT)) \
            if cfg.greedy_hint else None
        # decline: a score per window task from [agent context, task embedding], as the pointer's
        # inputs but a head of its own (declining is a judgement of the task's prospects, not a
        # preference among tasks to start); its output bias starts at DECLINE_INIT. Absent
        # without the option, so older checkpoints load unchanged.
        self.decline_head = mlp(2 * H, H, 1) if cfg.decline else None
        if self.decline_head is not None:
            with torch.no_grad():
                self.decline_head[-1].bias.fill_(DECLINE_INIT)

    # ------------------------------------------------------------------ shared parts
    def encode(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        h = self.encoder(batch)
        glob = scatter(h["cluster"], batch.cluster_round, dim=0, dim_size=batch.num_rounds, reduce="mean")
        pooled = torch.cat([h["cluster"][batch.agent_row], glob[batch.round_of_agent]], dim=-1)
        h["agent"] = self.ctx(pooled)
        h["value_in"] = pooled
        return h

    def values(self, h: dict[str, torch.Tensor], batch: GraphBatch) -> torch.Tensor:
        """The critic's value of every (round, agent) of `batch` (h: the actor's `encode`)."""
        if self.critic_encoder is None:
            z = h["value_in"]
        else:
            hc = self.critic_encoder(batch)["cluster"]
            glob = scatter(hc, batch.cluster_round, dim=0, dim_size=batch.num_rounds, reduce="mean")
            z = torch.cat([hc[batch.agent_row], glob[batch.round_of_agent]], dim=-1)
        if self.cfg.critic_progress:
            if batch.progress_x is None:
                raise ValueError("this critic needs each round's episode progress (collected rounds carry it)")
            z = torch.cat([z, batch.progress_x[batch.round_of_agent]], dim=-1)
        return self.critic(z).squeeze(-1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """"critic": the value head (and its encoder when separate); "actor": everything else."""
        critic_ids = {id(p) for m in (self.critic, self.critic_encoder) if m is not None for p in m.parameters()}
        return {"actor": [p for p in self.parameters() if id(p) not in critic_ids],
                "critic": [p for p in self.parameters() if id(p) in critic_ids]}

    def window_embeddings(self, h: dict, batch: GraphBatch, rows: torch.Tensor) -> torch.Tensor:
        wr = batch.window_row[rows]
        pend = h["pending"][wr.clamp(min=0)] if h["pending"].shape[0] else \
            torch.zeros(*wr.shape, self.cfg.hidden, device=wr.device)
        return pend * (wr >= 0).unsqueeze(-1)

    # ------------------------------------------------------------------ greedy's proposal (greedy_hint)
    def hints_of(self, batch: GraphBatch, rows: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Greedy's proposals for `rows` (None for a network without the option)."""
        if self.hint_weight is None:
            return None
        if getattr(batch, "hints", None) is None:
            raise ValueError("this network takes greedy's proposals as inputs (greedy_hint), but the rounds carry "
                             "none. Fix: plan the rounds with RoundPlanner(..., greedy_hint=True), whose round "
                             "arrays carry them (agents.learned.acting.HINT_KEYS).")
        return {k: v[rows] for k, v in batch.hints.items()}

    @staticmethod
    def _follows(hints: dict[str, torch.Tensor], place: torch.Tensor) -> torch.Tensor:
        """[S] 1.0 where the chosen window place is greedy's proposed task (node and amounts of a
        "do nothing" choice, place 0 here, are unused whatever this says)."""
        return hints["hint_task"].gather(1, (place + 1).unsqueeze(1)).squeeze(1)

    def alloc_hint(self, batch: GraphBatch, rows: torch.Tensor, place: torch.Tensor) -> torch.Tensor | None:
        """[S, R] greedy's amounts where the chosen task is greedy's, -1 elsewhere (no hint)."""
        hints = self.hints_of(batch, rows)
        if hints is None:
            return None
        return torch.where(self._follows(hints, place).unsqueeze(1) > 0, hints["hint_alloc"],
                           torch.full_like(hints["hint_alloc"], -1))

    # ------------------------------------------------------------------ heads
    def task_logits(self, h: dict, batch: GraphBatch, rows: torch.Tensor, task_mask: torch.Tensor,
                    pointer: bool = True) -> torch.Tensor:
        """[S, W+1] logits of the task choice (0 = do nothing, i = start place i-1); with `decline`
        [S, 2W+1], W+i = decline place i-1. `task_mask` has the same width."""
        ctx = h["agent"][rows]
        pend = self.window_embeddings(h, batch, rows)
        if pointer:
            score = self.v(torch.tanh(self.q(ctx).unsqueeze(1) + self.k(pend))).squeeze(-1)
            parts = [self.none_head(ctx), score]
            if self.decline_head is not None:
                both = torch.cat([ctx.unsqueeze(1).expand(-1, pend.shape[1], -1), pend], dim=-1)
                parts.append(self.decline_head(both).squeeze(-1))
            logits = torch.cat(parts, dim=1)
            hints = self.hints_of(batch, rows)
            if hints is not None:
                hint = hints["hint_task"]  # greedy never declines: nothing on the decline choices
                if self.decline_head is not None:
                    hint = torch.cat([hint, torch.zeros_like(hint[:, 1:])], dim=1)
                logits = logits + self.hint_weight[0] * hint
        else:  # ablation: uniform over the feasible choices (greedy's proposal too is ignored)
            logits = torch.zeros(task_mask.shape, device=ctx.device)
        return logits.masked_fill(~task_mask, NEG)

    def node_logits(self, h: dict, batch: GraphBatch, rows: torch.Tensor, place: torch.Tensor,
                    node_mask: torch.Tensor) -> torch.Tensor:
        ctx = h["agent"][rows]
        tp = self.window_embeddings(h, batch, rows)[torch.arange(rows.shape[0]), place]
        nr = batch.node_row[rows]
        nodes = h["node"][nr.clamp(min=0)]
        n = nodes.shape[1]
        z = torch.cat([ctx.unsqueeze(1).expand(-1, n, -1), tp.unsqueeze(1).expand(-1, n, -1), nodes], dim=-1)
        logits = self.node_head(z).squeeze(-1)
        hints = self.hints_of(batch, rows)
        if hints is not None:
            proposed = (torch.arange(n, device=nr.device) == hints["hint_node"].unsqueeze(1)).to(logits.dtype)
            logits = logits + self.hint_weight[1] * proposed * self._follows(hints, place).unsqueeze(1)
        return logits.masked_fill(~node_mask, NEG)

    def alloc_context(self, h: dict, batch: GraphBatch, rows: torch.Tensor, place: torch.Tensor,
                      node: torch.Tensor) -> torch.Tensor:
        ctx = h["agent"][rows]
        tp = self.window_embeddings(h, batch, rows)[torch.arange(rows.shape[0]), place]
        nr = batch.node_row[rows][torch.arange(rows.shape[0]), node]
        return self.alloc_in(torch.cat([ctx, tp, h["node"][nr.clamp(min=0)]], dim=-1))

    def alloc_logits(self, z: torch.Tensor, r: int, low: torch.Tensor, high: torch.Tensor,
                     previous: list[torch.Tensor], hint: torch.Tensor | None = None) -> torch.Tensor:
        """`hint` [S]: greedy's amount of resource r (`alloc_hint`; -1 = none), for greedy_hint."""
        for rr, a in enumerate(previous):
            z = z + self.alloc_embed[rr](a)  # autoregressive: later resources see earlier amounts
        logits = self.alloc_heads[r](F.relu(z))
        amounts = torch.arange(logits.shape[1], device=z.device)
        if hint is not None:
            logits = logits + self.hint_weight[2 + r] * (amounts == hint.unsqueeze(1)).to(logits.dtype)
        ok = (amounts >= low.unsqueeze(1)) & (amounts <= high.unsqueeze(1))
        ok[:, 0] |= ~ok.any(dim=1)  # rows without a feasible amount (unused) stay finite
        return logits.masked_fill(~ok, NEG)
