"""Testbed tools, apart from the simulator: the profiler of real training tasks and the importers
of real traces. They write files the simulator reads (profile CSVs, arrival traces); they may
import the simulator core, nothing above it (docs/architecture.md)."""
