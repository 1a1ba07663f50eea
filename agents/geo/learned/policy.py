"""`tapfinger-geo` as a `GeoPolicy`: the trained network plays greedily (argmax of each head) on the
decode masks of `agents.geo.learned.acting`, so every decision is valid by construction.

The geo harness (`tapfinger evaluate --scenario geo-6`) builds its policies by name with no
options, so the checkpoint defaults to the shipped `checkpoints/geo/<scenario name>.pt`, loaded at the
first `reset` for a scenario (a checkpoint made for another scenario or layout is refused there,
with the fix); `GeoLearnedPolicy(checkpoint=PATH)` plays another one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agents.geo.base import GeoPolicy
from agents.geo.learned.acting import decode, slot_inputs
from agents.geo.learned.checkpoint import load_geo_checkpoint
from agents.geo.registry import shipped_geo_checkpoint
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoScenario

def default_checkpoint(scenario: GeoScenario) -> Path:
    return shipped_geo_checkpoint(scenario.name)


class GeoLearnedPolicy(GeoPolicy):
    name = "tapfinger-geo"
    learned = True

    def __init__(self, checkpoint: str | Path | None = None, sample: bool = False):
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.sample = bool(sample)  # sample each head instead of its argmax (seeded by the episode seed)
        self.net = None
        self.payload: dict = {}
        self._for: GeoScenario | None = None
        self.teacher = None
        self.gen = torch.Generator()

    def reset(self, scenario: GeoScenario, seed: int) -> None:
        if self._for is not scenario:
            path = self.checkpoint or default_checkpoint(scenario)
            self.net, self.payload = load_geo_checkpoint(path, scenario)
            self._for = scenario
        self.teacher = None
        if self.net.hint_weight is not None:  # the network reads the teacher's proposals
            from agents.geo.registry import make_geo_policy

            self.teacher = make_geo_policy(self.payload["teacher"])
            self.teacher.reset(scenario, seed)
        self.gen.manual_seed(int(seed))

    def decide(self, engine: GeoEngine) -> GeoDecision:
        if self.net is None:
            raise RuntimeError("tapfinger-geo: call reset(scenario, seed) before decide()")
        inp = slot_inputs(engine, self.teacher)
        if inp is None:
            return GeoDecision()
        decision, _ = decode(self.net, engine, inp, "sample" if self.sample else "greedy", self.gen)
        return decision
