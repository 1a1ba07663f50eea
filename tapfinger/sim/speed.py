"""What a fixed allocation achieves: the slots a task needs alone at each (cpu, gpu), and which
allocations are worth considering at all.

Both are static scenario facts, shared by the heuristics' predictions (`agents.heuristics.
estimates`), the lower bound and the exact optimum (`tapfinger.evaluation`). The slot counts
come from `progress.slots_to_finish`, so they are the engine's counts to the bit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tapfinger.sim.progress import NEVER, slots_to_finish
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.tables import static_tables


@lru_cache(maxsize=256)
def _slot_table(scenario: Scenario, work: float) -> np.ndarray:
    st = static_tables(scenario)
    _, C1, G1 = st.weight.shape
    c = np.arange(C1)[None, :, None]
    g = np.arange(G1)[None, None, :]
    at_min = (c >= st.type_min[:, st.cpu][:, None, None]) & (g >= st.type_min[:, st.gpu][:, None, None])
    # Below the minimum the engine gives no progress: W = B = 0 there counts as NEVER.
    slots = slots_to_finish(np.where(at_min, st.weight, 0.0), np.where(at_min, st.base, 0.0), work)
    slots.setflags(write=False)  # cached and shared by every caller
    return slots


def slot_table(scenario: Scenario, work: float = 1.0) -> np.ndarray:
    """[K, C+1, G+1] slots a task of each type (and this work) needs alone at a fixed (cpu, gpu)
    allocation, as the engine counts them; NEVER below the minimum. Cached per (scenario, work)."""
    return _slot_table(scenario, float(work))


def efficient_allocations(slots: np.ndarray, low: tuple[int, int], high: tuple[int, int]) -> np.ndarray:
    """The Pareto-efficient (slots, cpu, gpu) of one task type within low <= (cpu, gpu) <= high.

    `slots` is the type's [C+1, G+1] slice of `slot_table`. A cell is efficient if no other
    cell is at least as fast with no more cpu and no more gpu; cells that never finish are
    left out. Rows [m, 3] come fastest first, then by fewer cpu + gpu, fewer gpu, fewer cpu.
    """
    cs = np.arange(low[0], high[0] + 1)
    gs = np.arange(low[1], high[1] + 1)
    cc, gg = (x.ravel() for x in np.meshgrid(cs, gs, indexing="ij"))
    ss = slots[cc, gg] if cc.size else np.zeros(0, dtype=np.int64)
    live = ss < NEVER
    cc, gg, ss = cc[live], gg[live], ss[live]
    order = np.lexsort((cc, gg, cc + gg, ss))
    cc, gg, ss = cc[order], gg[order], ss[order]
    # In this order every cell that dominates another comes before it (it is no slower and, being
    # a different cell with no more of either, strictly cheaper); so a cell is efficient iff no
    # earlier cell has no more cpu and no more gpu.
    earlier = np.tri(cc.size, k=-1, dtype=bool)
    dominated = (earlier & (cc[None, :] <= cc[:, None]) & (gg[None, :] <= gg[:, None])).any(axis=1)
    keep = ~dominated
    return np.stack([ss[keep], cc[keep], gg[keep]], axis=1).astype(np.int64)
