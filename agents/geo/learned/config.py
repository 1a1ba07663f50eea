"""The configuration of a `tapfinger-geo` training run: one dataclass tree, the single source of every
default. `scripts/train_geo.py` generates its flags from `GeoTrainConfig` with tyro (nested fields
keep flat names: `--hidden`, `--lr`); the field comments are the flags' help texts. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# Seed ranges: training episodes (imitation, DAgger, PPO) use seeds 0 .. TRAIN_SEEDS-1, the periodic
# validation VALIDATION_SEED.., and the held-out evaluation (`tapfinger evaluate`) 1000 and up.
TRAIN_SEEDS = 900
VALIDATION_SEED = 900


@dataclass
class GeoModelOptions:
    hidden: int = 48  # width of the hidden layers (a multiple of --heads)
    layers: int = 2  # graph-attention layers of the encoder
    heads: int = 2  # attention heads per layer
    teacher_hint: bool = True  # the teacher's proposal per job is an input both heads can copy or deviate from


@dataclass
class GeoPPOOptions:
    lr: float = 1e-3  # Adam learning rate of PPO
    gamma: float = 1.0  # discount per decided slot (1: the episode's total cost is what counts)
    gae_lambda: float = 0.95  # GAE lambda (--baseline gae)
    clip: float = 0.2  # PPO ratio clip
    epochs: int = 4  # PPO epochs per iteration
    minibatch_slots: int = 128  # decided slots per minibatch
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.01  # weight of the entropy bonus
    max_grad_norm: float = 0.5  # gradient-norm clip
    target_kl: float = 0.05  # stop an iteration's epochs past this approximate KL (0 = never)
    # advantages: gae (the critic's bootstrap), or input: the cost-to-go from the slot minus the mean
    # cost-to-go of the other rollouts of the same seed from the same slot (common random numbers)
    baseline: Literal["gae", "input"] = "input"
    rollouts_per_seed: int = 4  # episodes per job seed in an iteration (input needs >= 2; divides --episodes)


@dataclass
class GeoTrainConfig:
    scenario: str = "geo-6"  # geo built-in name or TOML file (family = "geo")
    run_dir: str = "runs/geo-6"  # folder for TensorBoard logs and the checkpoints (last.pt, best.pt)
    device: Literal["cpu", "cuda"] = "cpu"  # where the network updates run (episodes are played on cpu)
    seed: int = 0  # seed of every random draw of the run
    threads: int = 1  # torch CPU threads
    teacher: str = "okita"  # heuristic to clone and, with --teacher-hint, to take proposals from
    bc_episodes: int = 48  # teacher episodes of behaviour cloning (0 = no cloning)
    bc_epochs: int = 10  # epochs of behaviour cloning (and of each DAgger round)
    bc_lr: float = 1e-3  # learning rate of behaviour cloning
    dagger_rounds: int = 2  # rounds where the learner plays and the teacher labels its states
    dagger_episodes: int = 24  # learner episodes per DAgger round
    iterations: int = 400  # PPO iterations (0 = imitation only)
    episodes: int = 12  # episodes per PPO iteration
    reward_scale: float = 100.0  # reward = - slot cost / reward_scale
    eval_every: int = 5  # PPO iterations between validations (greedy play vs the teacher; 0 = never)
    eval_seeds: int = 16  # validation episodes (seeds 900..); best.pt is the best validated policy
    max_minutes: float = 0.0  # stop (and keep the checkpoints) after the first iteration past this wall time
    model: GeoModelOptions = field(default_factory=GeoModelOptions)
    ppo: GeoPPOOptions = field(default_factory=GeoPPOOptions)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "GeoTrainConfig":
        """Raise a ValueError naming the flag and the fix for the first invalid value."""
        for obj, name, ok, requirement in self._checks():
            if not ok:
                raise ValueError(_problem(obj, name, requirement))
        return self

    def _checks(self) -> list[tuple[Any, str, bool, str]]:
        m, p = self.model, self.ppo
        return [
            (self, "scenario", bool(self.scenario), "a geo built-in name or a TOML file"),
            (self, "run_dir", bool(self.run_dir), "a folder"),
            (self, "device", self.device in ("cpu", "cuda"), "cpu or cuda"),
            (self, "seed", self.seed >= 0, "at least 0"),
            (self, "threads", self.threads >= 1, "at least 1"),
            (self, "teacher", bool(self.teacher), "a geo heuristic's name, e.g. okita"),
            (self, "bc_episodes", self.bc_episodes >= 0, "at least 0"),
            (self, "bc_epochs", self.bc_epochs >= 1, "at least 1"),
            (self, "bc_lr", self.bc_lr > 0, "greater than 0"),
            (self, "dagger_rounds", self.dagger_rounds >= 0, "at least 0"),
            (self, "dagger_episodes", self.dagger_episodes >= 1, "at least 1"),
            (self, "iterations", self.iterations >= 0, "at least 0 (0 = imitation only)"),
            (self, "episodes", self.episodes >= 1, "at least 1"),
            (self, "reward_scale", self.reward_scale > 0, "greater than 0"),
            (self, "eval_every", self.eval_every >= 0, "at least 0"),
            (self, "eval_seeds", 1 <= self.eval_seeds <= 100, "between 1 and 100 (seeds 900..999)"),
            (self, "max_minutes", self.max_minutes >= 0, "at least 0 (0 = no limit)"),
            (m, "hidden", m.hidden >= 1, "at least 1"),
            (m, "layers", m.layers >= 1, "at least 1"),
            (m, "heads", m.heads >= 1 and m.hidden % m.heads == 0, f"at least 1 and divide --hidden ({m.hidden})"),
            (p, "lr", p.lr > 0, "greater than 0"),
            (p, "gamma", 0 < p.gamma <= 1, "in (0, 1]"),
            (p, "gae_lambda", 0 <= p.gae_lambda <= 1, "in [0, 1]"),
            (p, "clip", p.clip > 0, "greater than 0"),
            (p, "epochs", p.epochs >= 1, "at least 1"),
            (p, "minibatch_slots", p.minibatch_slots >= 1, "at least 1"),
            (p, "vf_coef", p.vf_coef >= 0, "at least 0"),
            (p, "ent_coef", p.ent_coef >= 0, "at least 0"),
            (p, "max_grad_norm", p.max_grad_norm > 0, "greater than 0"),
            (p, "target_kl", p.target_kl >= 0, "at least 0"),
            (p, "baseline", p.baseline in ("gae", "input"), "gae or input"),
            (p, "rollouts_per_seed", p.rollouts_per_seed >= (2 if p.baseline == "input" else 1)
             and self.episodes % p.rollouts_per_seed == 0,
             f"at least {2 if p.baseline == 'input' else 1} and divide --episodes ({self.episodes})"),
        ]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _problem(obj: Any, name: str, requirement: str) -> str:
    default = next((f.default for f in fields(obj) if f.name == name), None)
    hint = f" (the default is {default})" if isinstance(default, (int, float, str)) and default != "" else ""
    return (f"{flag(name)} must be {requirement}, not {getattr(obj, name)!r}. Fix: pass {flag(name)} "
            f"with such a value{hint}.")
