"""The encoder of `agents.learned.model` re-expressed with plain torch ops, for export.

Why not export `TapFingerNet` as it is: `torch.jit.script` no longer handles PyG's GAT layers, and
`torch.export` of the encoder traces but is silently wrong. `Encoder.forward` drops empty vertex
types and edge types with Python `if`s on tensor sizes, and HeteroConv then adds no bias for an
absent edge type; the tracer evaluates those `if`s once, for the example's sizes, so a program
traced with running tasks adds the running->node bias in every round, including rounds with no
running task (checked: errors of 0.3 in the node embeddings with trained biases).

So `PlainEncoder` runs the SAME computation with plain torch ops and the trained parameters
(shared, not copied): a GATv2 message passing with index_select / index_add / scatter_reduce in
PyG's order of operations, and a 0/1 factor on each edge type's bias standing for "this edge type
has edges". Every size is dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agents.export_format import ExportError
from agents.learned.model import Encoder
from envs.graph import EDGE_TYPES, EdgeType, VERTEX_TYPES


class PlainGATv2(nn.Module):
    """PyG `GATv2Conv((H, H), C, heads, add_self_loops=False)` on a bipartite edge type, as plain ops
    on the conv's own parameters. Returns the aggregated messages without the bias: the caller adds
    it only when the edge type has edges (HeteroConv skips edge types without edges)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        unsupported = [name for name, bad in (("share_weights", conv.share_weights), ("concat=False", not conv.concat),
                                              ("edge_dim", conv.edge_dim is not None),
                                              ("add_self_loops", conv.add_self_loops),
                                              ("residual", getattr(conv, "res", None) is not None)) if bad]
        if unsupported:
            raise ExportError(f"GATv2Conv options {unsupported} are not supported by the exporter. Fix: extend "
                              f"agents/learned/plain_encoder.py:PlainGATv2 for them.")
        self.weight_l, self.bias_l = conv.lin_l.weight, conv.lin_l.bias
        self.weight_r, self.bias_r = conv.lin_r.weight, conv.lin_r.bias
        self.att, self.bias = conv.att, conv.bias
        self.heads, self.channels = int(conv.heads), int(conv.out_channels)
        self.negative_slope = float(conv.negative_slope)

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        H, C = self.heads, self.channels
        D = x_dst.shape[0]
        x_l = F.linear(x_src, self.weight_l, self.bias_l).view(-1, H, C)
        x_r = F.linear(x_dst, self.weight_r, self.bias_r).view(-1, H, C)
        src, dst = edge_index[0], edge_index[1]
        x_j = x_l.index_select(0, src)
        x = x_r.index_select(0, dst) + x_j  # PyG: x_i + x_j
        x = F.leaky_relu(x, self.negative_slope)
        # One zero row appended before the reduction and dropped after: onnxruntime's ReduceSum
        # returns a wrongly shaped result for an empty input (an edge type with no edges). The
        # real rows are reduced exactly as before.
        x = torch.cat([x, x.new_zeros(1, H, C)], dim=0)
        alpha = (x * self.att).sum(dim=-1)[:-1]  # [E, H]
        # softmax over each destination's incoming edges, as torch_geometric.utils.softmax; a -inf
        # start (not PyG's 0 with include_self=False) gives the same maxima and exports to ONNX
        amax = torch.full((D, H), float("-inf"), dtype=alpha.dtype).scatter_reduce(
            0, dst.unsqueeze(1).expand(-1, H), alpha, "amax")
        e = (alpha - amax.index_select(0, dst)).exp()
        # index_add adds edge by edge in edge order, as PyG's scatter_add: the same sums bit for bit
        denom = torch.zeros((D, H), dtype=alpha.dtype).index_add(0, dst, e) + 1e-16
        alpha = e / denom.index_select(0, dst)
        msg = x_j * alpha.unsqueeze(-1)
        out = torch.zeros((D, H, C), dtype=msg.dtype).index_add(0, dst, msg)
        return out.view(-1, H * C)


def _has_edges(edge_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # 1.0 if the edge type has an edge, else 0.0, as a tensor: a Python `if` on the size would be
    # frozen at export time.
    return torch.ones_like(edge_index[0], dtype=dtype).sum().clamp(max=1.0)


class PlainEncoder(nn.Module):
    """`agents.learned.model.Encoder` without data-dependent Python control flow."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.inp = encoder.inp
        self.post = encoder.post
        self.norms = encoder.norms
        self.convs = nn.ModuleList(
            nn.ModuleDict({"__".join(et): PlainGATv2(hetero.convs[et]) for et in EDGE_TYPES})
            for hetero in encoder.convs)
        if encoder.convs and any(getattr(c, "aggr", "sum") != "sum" for c in encoder.convs):
            raise ExportError("only HeteroConv(aggr='sum') is supported by the exporter")

    def forward(self, x: dict[str, torch.Tensor], edges: dict[EdgeType, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        h = {k: F.relu(self.inp[k](x[k])) for k in VERTEX_TYPES}
        if self.post is not None:
            return {k: F.relu(self.post[k](v)) for k, v in h.items()}
        flags = {et: _has_edges(e, h["cluster"].dtype) for et, e in edges.items()}
        for convs, norm in zip(self.convs, self.norms):
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in VERTEX_TYPES}
            for et in EDGE_TYPES:  # HeteroConv's order, so sums add in the same order
                src, _, dst = et
                conv = convs["__".join(et)]
                parts[dst].append(conv(h[src], h[dst], edges[et]) + conv.bias * flags[et])
            # HeteroConv: one output is used as is, several are stacked and summed (an absent edge
            # type contributes exact zeros here, which leaves the sum unchanged)
            out = {k: v[0] if len(v) == 1 else torch.stack(v, dim=0).sum(dim=0) for k, v in parts.items()}
            h = {k: norm[k](h[k] + F.relu(out[k])) for k in VERTEX_TYPES}
        return h
