"""The network of `tapfinger-geo`: a HeteroConv of GATv2Conv layers over `envs.geo_graph`'s vertex
and edge types (with their edge attributes), a PS head, a workers head and a value head.

Per window job, in decode order (`agents.geo.learned.acting`):

    log pi(job's placement) = log pi(PS | .) + sum_r log pi(workers_r | PS, .)

The PS head scores "do not run" (from the slot context and the job) and each site (context, job,
site, the site's resources still free after the jobs decoded before). The workers head gives, per
site, logits over 0..max_workers_per_site from the same inputs plus the chosen PS site's embedding,
the free resources once the PS is placed, and whether the site is the PS's. The sites of one job
are independent given its PS (each site's capacity is its own), so one job's workers are sampled
at once; the jobs are sequential (they share the sites).

`teacher_hint`: the teacher's (okita's) proposal for the job enters both heads as a one-hot times
a learned weight (`hint_weight`), as `agents.learned.model`'s greedy_hint does for the edge: the
cloned policy can copy okita where okita is right and PPO can learn where to deviate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATv2Conv, HeteroConv
from torch_geometric.utils import scatter

from envs.geo_graph import EDGE_ATTR_COLUMNS, EDGE_TYPES, FORWARD_EDGES, VERTEX_TYPES, feature_dims

NEG = -1e9  # a masked logit: finite, so that a row with one allowed value never yields NaN
HINT_INIT = 4.0  # the hint's starting weight: the untrained policy's argmax is okita's choice
GLOBAL_FEATURES = 2  # slot / arrival slots, pending / window (`acting.slot_globals`)


@dataclass
class GeoNetConfig:
    num_sites: int
    num_resources: int
    max_workers: int  # scenario.max_workers_per_site
    window: int
    hidden: int = 48
    layers: int = 2
    heads: int = 2
    teacher_hint: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _attr_key(edge_type: tuple[str, str, str]) -> str:
    return edge_type[1].removeprefix("rev_")


@dataclass
class GeoBatch:
    """G slot graphs collated into one: sites of graph g are rows g*R .. g*R+R-1."""

    x: dict[str, torch.Tensor]
    edge_index: dict[tuple, torch.Tensor]
    edge_attr: dict[tuple, torch.Tensor]
    job_graph: torch.Tensor  # [J] the graph of each job vertex
    job_offset: torch.Tensor  # [G] the first job vertex of each graph
    globals_x: torch.Tensor  # [G, GLOBAL_FEATURES]
    G: int


def collate(arrays: list[dict], globals_x: list, device: torch.device | str = "cpu") -> GeoBatch:
    """One batch of `envs.geo_graph.graph_arrays` outputs (plus each slot's global features)."""
    R = arrays[0]["site_x"].shape[0]
    jobs = [a["job_x"].shape[0] for a in arrays]
    offs = torch.tensor([0, *jobs[:-1]]).cumsum(0) if arrays else torch.zeros(0, dtype=torch.long)
    t = lambda v: torch.as_tensor(v).to(device)  # noqa: E731
    x = {"site": t(torch.cat([torch.from_numpy(a["site_x"]) for a in arrays])),
         "job": t(torch.cat([torch.from_numpy(a["job_x"]) for a in arrays]))}
    base = {"site": [g * R for g in range(len(arrays))], "job": offs.tolist()}
    edge_index, edge_attr = {}, {}
    for et, key in FORWARD_EDGES:
        parts = [torch.from_numpy(a[f"{key}_edge"]) + torch.tensor([[base[et[0]][g]], [base[et[2]][g]]])
                 for g, a in enumerate(arrays)]
        index = t(torch.cat(parts, dim=1))
        attr = t(torch.cat([torch.from_numpy(a[f"{key}_attr"]) for a in arrays]))
        edge_index[et], edge_attr[et] = index, attr
        rev = (et[2], f"rev_{et[1]}", et[0])
        edge_index[rev], edge_attr[rev] = index.flip(0), attr
    job_graph = torch.repeat_interleave(torch.arange(len(arrays)), torch.tensor(jobs, dtype=torch.long))
    return GeoBatch(x, edge_index, edge_attr, t(job_graph), t(offs), t(torch.as_tensor(np.asarray(globals_x),
                    dtype=torch.float32).reshape(len(arrays), GLOBAL_FEATURES)), len(arrays))


class GeoEncoder(nn.Module):
    def __init__(self, cfg: GeoNetConfig):
        super().__init__()
        H = cfg.hidden
        self.inp = nn.ModuleDict({k: nn.Linear(d, H) for k, d in feature_dims(cfg.num_resources).items()})
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for _ in range(cfg.layers):
            # no self loops (bipartite edges); the skip connection keeps a vertex's own state. No bias: a
            # vertex without edges of a type would get it in a batch but not alone (where the type is absent)
            self.convs.append(HeteroConv({et: GATv2Conv((H, H), H // cfg.heads, heads=cfg.heads, add_self_loops=False, bias=False,
                                                        edge_dim=len(EDGE_ATTR_COLUMNS[_attr_key(et)]) or None)
                                          for et in EDGE_TYPES}, aggr="sum"))
            self.norms.append(nn.ModuleDict({k: nn.LayerNorm(H) for k in VERTEX_TYPES}))

    def forward(self, b: GeoBatch) -> dict[str, torch.Tensor]:
        h = {k: F.relu(self.inp[k](b.x[k])) for k in VERTEX_TYPES}
        edges = {et: e for et, e in b.edge_index.items() if e.shape[1]}
        for conv, norm in zip(self.convs, self.norms):
            present = {k: v for k, v in h.items() if v.shape[0]}
            use = {et: e for et, e in edges.items() if et[0] in present and et[2] in present}
            attrs = {et: b.edge_attr[et] for et in use if b.edge_attr[et].shape[1]}
            out = conv(present, use, edge_attr_dict=attrs)
            h = {k: norm[k](v + F.relu(out[k])) if k in out else v for k, v in h.items()}
        return h


class GeoNet(nn.Module):
    def __init__(self, cfg: GeoNetConfig):
        super().__init__()
        H, K, M = cfg.hidden, cfg.num_resources, cfg.max_workers
        self.cfg = cfg
        self.encoder = GeoEncoder(cfg)
        pooled = 2 * H + GLOBAL_FEATURES
        self.ctx = mlp(pooled, H, H)
        self.none_head = mlp(2 * H, H, 1)
        self.ps_head = mlp(3 * H + K, H, 1)
        self.worker_head = mlp(4 * H + K + 1, H, M + 1)
        self.critic = mlp(pooled, H, 1)
        self.hint_weight = nn.Parameter(torch.full((2,), HINT_INIT)) if cfg.teacher_hint else None

    def encode(self, b: GeoBatch) -> dict[str, torch.Tensor]:
        h = self.encoder(b)
        site = h["site"].view(b.G, self.cfg.num_sites, -1)
        jobs = scatter(h["job"], b.job_graph, dim=0, dim_size=b.G, reduce="mean")
        pooled = torch.cat([site.mean(dim=1), jobs, b.globals_x], dim=-1)
        return {"site": site, "job": h["job"], "ctx": self.ctx(pooled), "value": self.critic(pooled).squeeze(-1)}

    def ps_logits(self, enc: dict, graph: torch.Tensor, job: torch.Tensor, free: torch.Tensor, mask: torch.Tensor,
                  hint_ps: torch.Tensor | None) -> torch.Tensor:
        """[S, R+1]: 0 = do not run, r+1 = PS at site r. `free` [S, R, K] (normalised) before the job."""
        ctx, jv, sites = self.enc_parts(enc, graph, job)
        R = sites.shape[1]
        none = self.none_head(torch.cat([ctx, jv], dim=-1))
        z = torch.cat([ctx.unsqueeze(1).expand(-1, R, -1), jv.unsqueeze(1).expand(-1, R, -1), sites, free], dim=-1)
        logits = torch.cat([none, self.ps_head(z).squeeze(-1)], dim=1)
        if self.hint_weight is not None and hint_ps is not None:
            logits = logits + self.hint_weight[0] * F.one_hot(hint_ps, R + 1).to(logits.dtype)
        return logits.masked_fill(~mask, NEG)

    def worker_logits(self, enc: dict, graph: torch.Tensor, job: torch.Tensor, ps: torch.Tensor,
                      free_after: torch.Tensor, mask: torch.Tensor, hint_ps: torch.Tensor | None,
                      hint_workers: torch.Tensor | None) -> torch.Tensor:
        """[S, R, M+1] per site logits of 0..M workers given the PS choice `ps` (0 = none)."""
        ctx, jv, sites = self.enc_parts(enc, graph, job)
        S, R, _ = sites.shape
        ps_site = sites[torch.arange(S, device=ps.device), (ps - 1).clamp(min=0)] * (ps > 0).unsqueeze(-1)
        is_ps = (torch.arange(R, device=ps.device).unsqueeze(0) == (ps - 1).unsqueeze(1)).unsqueeze(-1)
        z = torch.cat([ctx.unsqueeze(1).expand(-1, R, -1), jv.unsqueeze(1).expand(-1, R, -1), sites,
                       ps_site.unsqueeze(1).expand(-1, R, -1), free_after, is_ps.to(sites.dtype)], dim=-1)
        logits = self.worker_head(z)
        if self.hint_weight is not None and hint_workers is not None:
            follows = ((ps == hint_ps) & (ps > 0)).to(logits.dtype).view(S, 1, 1)
            onehot = F.one_hot(hint_workers.clamp(0, self.cfg.max_workers), self.cfg.max_workers + 1)
            logits = logits + self.hint_weight[1] * follows * onehot.to(logits.dtype)
        return logits.masked_fill(~mask, NEG)

    @staticmethod
    def enc_parts(enc: dict, graph: torch.Tensor, job: torch.Tensor):
        return enc["ctx"][graph], enc["job"][job], enc["site"][graph]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
