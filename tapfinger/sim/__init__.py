"""The simulator core: scenarios, arrival streams and traces, progress models, static tables and
the engine. numpy only; imports nothing from `envs`, `agents`, `tapfinger.evaluation`,
`tapfinger.testbed` or `tapfinger.cli` (docs/architecture.md)."""
