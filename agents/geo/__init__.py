"""Schedulers of the geo-distributed setting (issue 16): heuristics, and the learned policy."""
