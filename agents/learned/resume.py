"""What `--resume` may change: a resumed run keeps the hyperparameters it was started with.

Exact resume (N steps straight = N/2 + resume + N/2) holds only if every option that shapes the
run is the same, so a changed one is refused with the flag named, never silently kept or
silently applied. `tapfinger train --resume` starts from the run's stored options (flags not given
keep the run's values), so only flags the user passes can differ. Options that do not change
the trained parameters may change: the step budget, where and how many processes collect (the
lockstep collector gives the same episodes for any split), and the periodic evaluation. The
acting options (`--multi-task`, `--max-sequence`, `--no-bayes`, `--no-pointer`) never may: they
shape what is collected and how PPO scores it, and the checkpoint's mode is the one `tapfinger`
plays in.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from agents.learned.checkpoint import CheckpointError
from agents.learned.config import TrainConfig, _flatten, flag

MAY_CHANGE_ON_RESUME = frozenset({
    "scenario",  # the checkpoint's scenario fingerprint is checked on load; a path may name a built-in
    "run_dir", "total_steps", "workers", "backend", "ray_address", "device", "eval_every", "eval_seeds", "eval_heuristic",
    "checkpoint_every", "max_minutes",
})


def stored_config(payload: dict) -> dict:
    """The flat options (`model.hidden`, `ppo.lr`, ...) a run was started with ({} if not stored)."""
    raw = payload.get("train_config")
    return _flatten(json.loads(raw)) if raw else {}


def check_resumable(path: Path, payload: dict, cfg: TrainConfig) -> None:
    stored, asked = payload.get("acting") or {}, cfg.acting_dict()
    if stored != asked:
        differs = ", ".join(f"{k.replace('_', '-')} {stored.get(k)!r} -> {asked.get(k)!r}"
                            for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k))
        raise CheckpointError(f"{path} was trained with acting options {stored}, not {asked} ({differs}). "
                              f"Fix: use the same --multi-task/--no-bayes/--max-sequence/--no-pointer flags "
                              f"as that run.")
    old = stored_config(payload)
    new = _flatten(json.loads(json.dumps(asdict(cfg))))  # as stored: JSON has lists, not tuples (--rates)
    changed = [(k, old[k], v) for k, v in new.items()
               if k in old and k.split(".")[-1] not in MAY_CHANGE_ON_RESUME and old[k] != v]
    if changed:
        said = "; ".join(f"{flag(k.split('.')[-1])} {v!r} differs from the run's {o!r}" for k, o, v in changed)
        raise CheckpointError(f"--resume of {path}: {said}. A resumed run keeps its hyperparameters, so that it "
                              f"continues exactly. Fix: drop those flags (the run's values are used), or start a "
                              f"new --run-dir to train with the new values.")
