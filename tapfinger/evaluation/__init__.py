"""Evaluation: episode metrics, statistics across seeds, lower bounds, the exact optimum of small
instances, the harness that runs policies on common seeds, and plots. May import the simulator
core, `envs` and `agents`; never the CLI (docs/architecture.md)."""
