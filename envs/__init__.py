"""Environments. `make("tapfinger/edge-cluster-v0", scenario=...)` builds the edge-cluster env."""

from __future__ import annotations

from typing import Any, Callable

from envs.edge_cluster import ENV_ID, EdgeClusterEnv

_REGISTRY: dict[str, Callable[..., Any]] = {ENV_ID: EdgeClusterEnv}


def register(env_id: str, factory: Callable[..., Any]) -> None:
    if env_id in _REGISTRY:
        raise ValueError(f"environment id {env_id!r} is already registered")
    _REGISTRY[env_id] = factory


def make(env_id: str = ENV_ID, **kwargs: Any):
    """Build a registered environment, e.g. make("tapfinger/edge-cluster-v0", scenario="hetero-6")."""
    try:
        factory = _REGISTRY[env_id]
    except KeyError:
        raise ValueError(f"unknown environment id {env_id!r}; registered: {sorted(_REGISTRY)}") from None
    return factory(**kwargs)


def parallel_env(scenario: str = "edge-default", **kwargs: Any) -> EdgeClusterEnv:
    return EdgeClusterEnv(scenario, **kwargs)


__all__ = ["ENV_ID", "EdgeClusterEnv", "make", "parallel_env", "register"]
