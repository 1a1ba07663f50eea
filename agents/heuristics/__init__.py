"""Heuristic schedulers, one module each (see agents/registry.py for their names)."""
