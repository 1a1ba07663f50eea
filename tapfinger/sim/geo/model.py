"""The geo-distributed setting (issue 16, after Okita and ENTS): sites, jobs and their costs.

A site is an edge server or a small edge cloud with a capacity per resource; between every two
sites there is a bandwidth cost per 100 MB and, optionally, a link capacity in MB per slot. A job
is data-parallel training whose data blocks are spread over sites: one parameter server (PS) and
workers on any sites, each worker training only the blocks present at its own site.
`docs/geo-distributed.md` states our reading of the patent where its formulas are garbled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LATENCY_KINDS = ("sigmoid", "linear", "piecewise")
GEO_RESOURCES = ("gpu", "cpu", "mem", "disk")


@dataclass(frozen=True)
class LatencyCost:
    """f(t): what a job's completion time t (its JCT in slots) costs. Non-decreasing in t.

    sigmoid: weight / (1 + exp(-(t - midpoint) / scale)), the patent's default;
    linear: tau * t + b; piecewise: tau1 if t <= deadline else tau2 (a hard deadline).
    The scenario parser keeps f(t) >= 0 and non-decreasing for t >= 0 (weight >= 0, scale > 0,
    tau >= 0, b >= 0, 0 <= tau1 <= tau2), so a latency cost is never a gain."""

    kind: str = "sigmoid"
    weight: float = 100.0
    midpoint: float = 20.0
    scale: float = 5.0
    tau: float = 1.0
    b: float = 0.0
    tau1: float = 0.0
    tau2: float = 100.0
    deadline: float = 20.0

    def __call__(self, t: float) -> float:
        if self.kind == "sigmoid":
            x = -(t - self.midpoint) / self.scale
            if x <= 0.0:  # exp(x) <= 1: the textbook form cannot overflow
                return self.weight / (1.0 + math.exp(x))
            # exp(x) would overflow for x > ~709 (a small scale, t far below the midpoint); the
            # same value through exp(-x) < 1 cannot
            e = math.exp(-x)
            return self.weight * e / (1.0 + e)
        if self.kind == "linear":
            return self.tau * t + self.b
        return self.tau1 if t <= self.deadline else self.tau2

    def increment(self, t: int) -> float:
        """f(t + 1) - f(t): what one more slot of waiting costs a job t slots after its arrival."""
        return self(t + 1) - self(t)


@dataclass(frozen=True)
class GeoJob:
    arrival: int  # the slot the job arrives in (it may run from this slot on)
    blocks: tuple[int, ...]  # data blocks initially at each site
    block_mb: float  # theta_i: MB per block
    epochs: int  # e_i: passes each block needs
    blocks_per_slot: int  # p_i: block-passes one worker trains per slot
    worker: tuple[int, ...]  # w_i^k: one worker's demand per resource
    ps: tuple[int, ...]  # s_i^k: the parameter server's demand per resource
    exchange_mb: float  # lambda_i: MB each worker exchanges with the PS per slot
    latency: LatencyCost = LatencyCost()

    @property
    def total_blocks(self) -> int:
        return sum(self.blocks)

    @property
    def total_passes(self) -> int:
        return self.epochs * self.total_blocks


@dataclass(frozen=True)
class GeoSites:
    names: tuple[str, ...]
    capacity: tuple[tuple[int, ...], ...]  # [R][K]
    cost: tuple[tuple[float, ...], ...]  # [R][R] bandwidth cost per 100 MB, symmetric, zero diagonal
    link_mb: tuple[tuple[float, ...], ...]  # [R][R] MB per slot a directed link carries; 0 = unlimited

    @property
    def count(self) -> int:
        return len(self.names)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.capacity, dtype=np.int64), np.asarray(self.cost, dtype=float),
                np.asarray(self.link_mb, dtype=float))


@dataclass(frozen=True)
class JobRanges:
    """What the seeded generator draws each job from (inclusive integer or float ranges)."""

    count: int
    arrival_slots: int  # arrivals uniform over slots 0 .. arrival_slots-1
    data_sites: tuple[int, int]  # how many sites hold a job's data
    blocks_per_site: tuple[int, int]
    block_mb: tuple[float, float]
    epochs: tuple[int, int]
    blocks_per_slot: tuple[int, int]
    exchange_mb: tuple[float, float]
    worker_low: tuple[int, ...]
    worker_high: tuple[int, ...]
    ps_low: tuple[int, ...]
    ps_high: tuple[int, ...]
    latency: str = "sigmoid"
    # per latency kind, the parameters drawn uniformly from these (low, high) ranges
    latency_ranges: tuple[tuple[str, tuple[float, float]], ...] = ()


@dataclass(frozen=True)
class GeoScenario:
    name: str
    description: str
    resources: tuple[str, ...]
    sites: GeoSites
    jobs: JobRanges
    max_slots: int = 1000
    max_workers_per_site: int = 4  # per job and site: bounds the action space
    window: int = 8  # jobs an observation shows (the oldest pending first)

    @property
    def num_sites(self) -> int:
        return self.sites.count

    @property
    def num_resources(self) -> int:
        return len(self.resources)
