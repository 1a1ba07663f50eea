"""Small random instances for exact optima (the optimality-gap study, the tests)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tapfinger.sim.scenario import Cluster, Scenario, load_scenario


def small_scenario(num_clusters: int = 3, seed: int = 0, tasks: int = 12, rate: float = 2.0,
                   cpu_range: tuple[int, int] = (4, 8), gpu_range: tuple[int, int] = (4, 8),
                   grid_max: tuple[int, int] = (8, 8)) -> Scenario:
    """A small synthetic-3-like scenario (IMG and LM tasks) for exact optima: `num_clusters`
    one-node clusters of random size in cpu_range x gpu_range (inclusive), drawn from `seed`."""
    base = load_scenario("synthetic-3")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A11]))
    cpu = base.resource_index("cpu")
    clusters = []
    for i in range(num_clusters):
        c = int(rng.integers(cpu_range[0], cpu_range[1] + 1))
        g = int(rng.integers(gpu_range[0], gpu_range[1] + 1))
        clusters.append(Cluster(f"c{i}", ((c, g) if cpu == 0 else (g, c),)))
    grid = tuple(grid_max) if cpu == 0 else tuple(reversed(grid_max))
    return dataclasses.replace(
        base, name=f"small-{num_clusters}-{seed}", description="small random instance for exact optima",
        clusters=tuple(clusters), grid_max=grid,
        arrivals=dataclasses.replace(base.arrivals, tasks=tasks, rate=rate))
