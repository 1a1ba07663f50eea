"""`tapfinger train`: multi-agent PPO (with an optional imitation warm start) for one scenario."""

from __future__ import annotations

import argparse
import json

from tapfinger.sim.scenario import load_scenario


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the TapFinger policy (MAPPO), with TensorBoard logs and checkpoints",
                       description="Train the graph-attention actor-critic with multi-agent PPO. Logs to "
                                   "TensorBoard in RUN_DIR (tensorboard --logdir RUN_DIR), writes RUN_DIR/"
                                   "checkpoint.pt atomically every iteration; --resume continues exactly.")
    p.add_argument("--scenario", required=True, help="built-in name or TOML file")
    p.add_argument("--run-dir", required=True, help="folder for TensorBoard logs and the checkpoint")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the update runs (default cpu)")
    p.add_argument("--envs", type=int, default=2, help="environments stepping in parallel worker processes")
    p.add_argument("--total-steps", type=int, default=100_000, help="environment rounds of PPO (0 = only the imitation warm start)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imitate", default="greedy",
                   help="heuristic to imitate before PPO (warm start; default greedy; '' to skip)")
    p.add_argument("--imitation-episodes", type=int, default=0, help="teacher episodes (default 2 x envs)")
    p.add_argument("--imitation-epochs", type=int, default=10)
    p.add_argument("--dagger-rounds", type=int, default=0,
                   help="after cloning, rounds where the learner plays and the teacher labels its states")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--encoder", default="graph", choices=["graph", "mlp"], help="mlp = no-graph ablation")
    p.add_argument("--multi-task", action="store_true", help="emit sequences of choices per decision")
    p.add_argument("--no-bayes", action="store_true", help="resolve conflicts by score alone (ablation)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ent-coef", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per iteration")
    p.add_argument("--eval-every", type=int, default=5, help="iterations between evaluations (0 = never)")
    p.add_argument("--eval-seeds", type=int, default=5)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from agents.learned.ppo import PPOConfig
    from agents.learned.train import TrainConfig

    if args.envs < 1 or args.total_steps < 0:
        raise ValueError("--envs must be at least 1 and --total-steps at least 0 (0 = imitation only)")
    return TrainConfig(scenario=args.scenario, run_dir=args.run_dir, device=args.device, envs=args.envs,
                       total_steps=args.total_steps, seed=args.seed, hidden=args.hidden, layers=args.layers,
                       heads=args.heads, encoder=args.encoder, multi_task=args.multi_task, bayes=not args.no_bayes,
                       imitate=args.imitate, imitation_episodes=args.imitation_episodes,
                       imitation_epochs=args.imitation_epochs, dagger_rounds=args.dagger_rounds,
                       eval_every=args.eval_every,
                       eval_seeds=args.eval_seeds,
                       ppo=PPOConfig(lr=args.lr, ent_coef=args.ent_coef, epochs=args.epochs))


def run(args: argparse.Namespace) -> int:
    from agents.learned.train import Trainer

    cfg = config_from_args(args)
    scenario = load_scenario(args.scenario)
    trainer = Trainer(cfg, scenario, resume=args.resume, progress=not args.quiet)
    out = trainer.train()
    last = out["history"][-1] if out["history"] else {}
    print(json.dumps({"iterations": out["iterations"], "steps": out["steps"], "last": last}, indent=1))
    print(f"checkpoint: {trainer.ckpt_path}")
    return 0
