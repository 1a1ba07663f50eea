"""The configuration of a training run: one dataclass tree, the single source of every default.

`tapfinger train` generates its flags from `TrainConfig` (tapfinger/cli/train.py, with tyro:
nested fields keep flat names such as `--hidden` and `--lr`), so a default or a help text
lives here once. The field comments are the flags' help texts. This module imports neither
torch nor tyro: the CLI's `--help` stays fast and programmatic users need no CLI library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from agents.learned.acting import ActingOptions

if TYPE_CHECKING:  # torch-free at run time
    from agents.learned.model import ModelConfig
    from tapfinger.sim.scenario import Scenario


@dataclass
class ModelOptions:
    """The network's size options; the scenario supplies the rest (`ModelConfig.for_scenario`)."""

    hidden: int = 64  # width of the hidden layers (a multiple of --heads)
    layers: int = 2  # graph-attention layers of the encoder
    heads: int = 2  # attention heads per graph-attention layer
    encoder: Literal["graph", "mlp"] = "graph"  # graph attention, or mlp: the no-graph ablation
    separate_critic: bool = True  # the critic gets its own encoder (--no-separate-critic: shared, as before)
    critic_progress: bool = True  # the critic also sees tasks yet to arrive and in the system (training only)
    greedy_hint: bool = False  # greedy's proposal for each agent is an input the network can copy or deviate from
    hint_policy: str = "greedy"  # the heuristic whose proposal is that hint (--greedy-hint): greedy, or e.g. edgeflow


@dataclass
class PPOConfig:
    lr: float = 3e-4  # Adam learning rate
    critic_lr: float = 0.0  # learning rate of a separate critic (0 = --lr)
    gamma: float = 0.95  # discount per slot
    gae_lambda: float = 0.9  # GAE lambda (0 = one-step TD advantages, 1 = Monte-Carlo)
    clip: float = 0.2  # PPO ratio clip
    epochs: int = 4  # PPO epochs per iteration
    minibatch_rounds: int = 256  # rounds (all their agents' decisions) per minibatch
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.003  # weight of the entropy bonus (all heads) at the start of PPO
    ent_coef_end: float = 0.0003  # the entropy weight reached at the end of its linear decay (the decay steps below)
    ent_decay_steps: int = 100_000  # PPO rounds of that decay (not --total-steps: a resume may change that)
    value_norm: bool = True  # critic learns returns normalised by running mean/std (--no-value-norm: raw)
    baseline: Literal["gae", "input"] = "gae"  # advantages: GAE, or Decima's input-driven baseline
    rollouts_per_seed: int = 1  # episodes per arrival seed in an iteration (the input baseline needs >= 2)
    critic_warmup: int = 0  # first PPO iterations in which only the critic learns (the policy stays put)
    max_grad_norm: float = 0.5  # gradient-norm clip
    target_kl: float = 0.05  # stop an iteration's epochs past this approximate KL (0 = never)


@dataclass
class TrainConfig:
    scenario: str  # built-in scenario name or TOML file
    run_dir: str  # folder for TensorBoard logs and the checkpoint
    device: Literal["cpu", "cuda"] = "cpu"  # where the network updates run
    envs: int = 16  # episodes per PPO iteration, stepped in lockstep with batched forward passes
    workers: int = 0  # processes sharing the --envs (0 = one per CPU core on cpu, 1 on cuda)
    backend: Literal["local", "ray"] = "local"  # --workers as local processes or Ray actors (docs/scale-out.md)
    ray_address: str = ""  # with --backend ray: a Ray cluster's HOST:PORT ('' = start Ray here)
    total_steps: int = 100_000  # environment rounds of PPO (0 = only the imitation warm start)
    seed: int = 0  # seed of every random draw of the run
    imitate: str = "greedy"  # heuristic to imitate before PPO (warm start; '' to skip)
    # start from this checkpoint's weights instead of imitation; with --dagger-rounds: expert iteration
    # (the starting policy plays, the --imitate teacher labels its states)
    init_from: str = ""
    imitation_episodes: int = 0  # teacher episodes of the warm start (0 = 2 x --envs)
    imitation_epochs: int = 10  # epochs of behaviour cloning
    dagger_rounds: int = 0  # after cloning: rounds where the learner plays and the teacher labels its states
    reward_scale: float = 0.05  # team reward per task in the system per slot (negated)
    # deadline scenarios: each task that misses its deadline (declined, or unfinished at its deadline)
    # costs this many task-slots of reward, once (0 = JCT alone)
    miss_penalty: float = 0.0
    # the decline action (admission control; ModelConfig.decline): auto = on exactly where the scenario
    # has allow_decline; on = the same, refusing a scenario without it; off = never decline
    decline: Literal["auto", "on", "off"] = "auto"
    eval_every: int = 5  # iterations between evaluations against --eval-heuristic (0 = never)
    eval_seeds: int = 5  # evaluation episodes (seeds 900..)
    eval_heuristic: str = "greedy"  # heuristic the periodic evaluation compares with
    checkpoint_every: int = 1  # iterations between checkpoint writes
    max_minutes: float = 0.0  # stop (and save) after the first iteration past this wall time (0 = no limit)
    # a distribution of loads: arrival seed j of an iteration plays at rates[j % len] (Poisson scenarios;
    # empty = the scenario's own rate), so one policy learns several loads instead of one
    rates: tuple[float, ...] = ()
    # a distribution of fault rates (scenarios with [faults]): arrival seed j of an iteration plays with the
    # scenario's fault rates times fault_scales[j % len] (0 = no faults; empty = the scenario's own faults)
    fault_scales: tuple[float, ...] = ()
    # node health and speed in the graph's features (ModelConfig.node_faults): auto = on exactly where the
    # scenario has [faults]; on = always (1s where nothing fails); off = never
    node_faults: Literal["auto", "on", "off"] = "auto"
    model: ModelOptions = field(default_factory=ModelOptions)
    acting: ActingOptions = field(default_factory=ActingOptions)
    ppo: PPOConfig = field(default_factory=PPOConfig)

    def model_config(self, scenario: Scenario) -> ModelConfig:
        """The network's full configuration for `scenario` (imports torch)."""
        from agents.learned.model import ModelConfig

        return ModelConfig.for_scenario(scenario, **asdict(self.model), decline=self.declines(scenario),
                                        node_faults=self.sees_node_faults(scenario))

    def sees_node_faults(self, scenario: Scenario) -> bool:
        """Whether the network of this run for `scenario` sees node health and speed (--node-faults)."""
        return self.node_faults == "on" or (self.node_faults == "auto" and scenario.faults.active)

    def declines(self, scenario: Scenario) -> bool:
        """Whether the network of this run for `scenario` has the decline action (--decline)."""
        if self.decline == "on" and not scenario.allow_decline:
            raise ValueError(f"--decline on needs a scenario that allows declining tasks (allow_decline = true); "
                             f"'{scenario.name}' does not. Fix: drop --decline (auto: on exactly where the scenario "
                             f"allows it), or train on a scenario with allow_decline = true.")
        return self.decline == "on" or (self.decline == "auto" and scenario.allow_decline)

    def acting_dict(self) -> dict:
        """The acting options as stored in a checkpoint."""
        return asdict(self.acting)

    def hparam_table(self) -> str:
        """A markdown table of every option, nested ones as `model.hidden`, `ppo.lr`, ..."""
        flat = _flatten(asdict(self))
        shown = {k: '""' if v == "" else v for k, v in flat.items()}  # an empty option still shows a value
        return "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in shown.items())

    def validate(self) -> "TrainConfig":
        """Raise a ValueError naming the flag and the fix for the first invalid value."""
        for obj, name, ok, requirement in self._checks():
            if not ok:
                raise ValueError(_problem(obj, name, requirement))
        if self.imitate:  # '' = no warm start
            _check_heuristic("imitate", self.imitate, allow_empty=True)
        _check_heuristic("eval_heuristic", self.eval_heuristic, allow_empty=False)
        return self

    def _checks(self) -> list[tuple[Any, str, bool, str]]:
        m, a, p = self.model, self.acting, self.ppo
        return [
            (self, "scenario", bool(self.scenario), "a built-in scenario name or a TOML file"),
            (self, "run_dir", bool(self.run_dir), "a folder"),
            (self, "device", self.device in ("cpu", "cuda"), "cpu or cuda"),
            (self, "envs", self.envs >= 1, "at least 1"),
            (self, "workers", self.workers >= 0, "at least 0 (0 = automatic)"),
            (self, "backend", self.backend in ("local", "ray"), "local or ray"),
            (self, "ray_address", not self.ray_address or self.backend == "ray",
             "empty unless --backend ray (add --backend ray)"),
            (self, "total_steps", self.total_steps >= 0, "at least 0 (0 = imitation only)"),
            (self, "seed", self.seed >= 0, "at least 0"),
            (self, "rates", all(0 < r <= 1_000_000 for r in self.rates), "positive arrival rates, e.g. --rates 4 6 9"),
            (self, "fault_scales", all(0 <= x <= 1_000_000 for x in self.fault_scales),
             "fault scales of 0 or more (0 = no faults, 1 = the scenario's), e.g. --fault-scales 0 1 2"),
            (self, "node_faults", self.node_faults in ("auto", "on", "off"), "auto, on or off"),
            (self, "imitation_episodes", self.imitation_episodes >= 0, "at least 0 (0 = 2 x --envs)"),
            (self, "imitation_epochs", self.imitation_epochs >= 1, "at least 1"),
            (self, "dagger_rounds", self.dagger_rounds >= 0, "at least 0"),
            (self, "reward_scale", self.reward_scale > 0, "greater than 0"),
            (self, "miss_penalty", self.miss_penalty >= 0, "0 or more"),
            (self, "decline", self.decline in ("auto", "on", "off"), "auto, on or off"),
            (self, "eval_every", self.eval_every >= 0, "at least 0 (0 = never)"),
            (self, "eval_seeds", self.eval_seeds >= 1, "at least 1"),
            (self, "checkpoint_every", self.checkpoint_every >= 1, "at least 1"),
            (self, "max_minutes", self.max_minutes >= 0, "at least 0 (0 = no limit)"),
            (m, "hidden", m.hidden >= 1, "at least 1"),
            (m, "layers", m.layers >= 1, "at least 1"),
            (m, "heads", m.heads >= 1 and m.hidden % m.heads == 0, f"at least 1 and divide --hidden ({m.hidden})"),
            (m, "encoder", m.encoder in ("graph", "mlp"), "graph or mlp"),
            (a, "max_sequence", a.max_sequence >= 1, "at least 1"),
            (p, "lr", p.lr > 0, "greater than 0"),
            (p, "critic_lr", p.critic_lr >= 0, "at least 0 (0 = --lr)"),
            (p, "gamma", 0 < p.gamma <= 1, "in (0, 1]"),
            (p, "gae_lambda", 0 <= p.gae_lambda <= 1, "in [0, 1]"),
            (p, "clip", p.clip > 0, "greater than 0"),
            (p, "epochs", p.epochs >= 1, "at least 1"),
            (p, "minibatch_rounds", p.minibatch_rounds >= 1, "at least 1"),
            (p, "vf_coef", p.vf_coef >= 0, "at least 0"),
            (p, "ent_coef", p.ent_coef >= 0, "at least 0"),
            (p, "max_grad_norm", p.max_grad_norm > 0, "greater than 0"),
            (p, "target_kl", p.target_kl >= 0, "at least 0 (0 = never stop early)"),
            (p, "ent_coef_end", p.ent_coef_end >= 0, "at least 0"),
            (p, "ent_decay_steps", p.ent_decay_steps >= 0, "at least 0"),
            (p, "critic_warmup", p.critic_warmup >= 0, "at least 0"),
            (p, "baseline", p.baseline in ("gae", "input"), "gae or input"),
            (p, "rollouts_per_seed", p.rollouts_per_seed >= (2 if p.baseline == "input" else 1)
             and self.envs % p.rollouts_per_seed == 0,
             f"at least {2 if p.baseline == 'input' else 1} (2 or more for --baseline input) and divide --envs "
             f"({self.envs})"),
        ]

    def worker_count(self) -> int:
        """--workers, with 0 resolved: one process on cuda (large batches on the device), else one
        per core, never more than --envs."""
        import os

        if self.workers:
            return min(self.workers, self.envs)
        return 1 if self.device == "cuda" else max(1, min(os.cpu_count() or 1, self.envs))

    def ent_coef_at(self, steps: int) -> float:
        """The entropy coefficient after `steps` PPO rounds (linear from ent_coef to ent_coef_end;
        0 decay steps: ent_coef_end at once)."""
        frac = min(1.0, steps / self.ppo.ent_decay_steps) if self.ppo.ent_decay_steps else 1.0
        return self.ppo.ent_coef + frac * (self.ppo.ent_coef_end - self.ppo.ent_coef)


def flag(name: str) -> str:
    """The command-line flag of a config field (nested fields keep flat names)."""
    return "--" + name.replace("_", "-")


def _problem(obj: Any, name: str, requirement: str) -> str:
    default = next((f.default for f in fields(obj) if f.name == name), None)
    hint = f" (the default is {default})" if isinstance(default, (int, float, str)) and default != "" else ""
    return (f"{flag(name)} must be {requirement}, not {getattr(obj, name)!r}. Fix: pass {flag(name)} "
            f"with such a value{hint}.")


def _check_heuristic(name: str, value: str, allow_empty: bool) -> None:
    from agents.registry import policy_class, policy_names

    skip = ", or '' to skip the warm start" if allow_empty else ""
    try:
        learned = policy_class(value).learned
    except ValueError:
        learned = None
    if learned is None or learned:
        heuristics = [n for n in policy_names() if not policy_class(n).learned]
        raise ValueError(f"{flag(name)} must name a heuristic, not {value!r}. Fix: pass {flag(name)} with one "
                         f"of {', '.join(heuristics)}{skip}.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
