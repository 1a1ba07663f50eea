"""Environments, registered in PettingZoo's own registry on import:

    import envs, pettingzoo
    pettingzoo.make("parallel", "tapfinger/edge-cluster-v0", scenario="hetero-6")  # ParallelEnv
    pettingzoo.make("aec", "tapfinger/edge-cluster-v0", scenario="hetero-6")       # AECEnv

`envs.make(ENV_ID, ...)` is the parallel one, with unknown ids reported as a ValueError.
"""

from __future__ import annotations

from typing import Any

import pettingzoo
from pettingzoo.env_registry.exceptions import FailedToImport, PettingZooRegistryError
from pettingzoo.utils.conversions import parallel_to_aec

from envs.edge_cluster import ENV_ID, EdgeClusterEnv
from envs.geo_env import GEO_ENV_ID, GeoSitesEnv

# PettingZoo's module convention: `parallel_env()` and `env()` (the AEC view of the same env), per id.
# The geo id (issue 16) is the same class's geo form: EdgeClusterEnv("geo-6") is a GeoSitesEnv too.
ENTRY_POINTS = {ENV_ID: {"parallel": "envs:parallel_env", "aec": "envs:env"},
                GEO_ENV_ID: {"parallel": "envs.geo_env:parallel_env", "aec": "envs.geo_env:env"}}


def parallel_env(scenario: Any = "edge-default", **kwargs: Any) -> EdgeClusterEnv:
    """The edge-cluster ParallelEnv (`scenario`: a built-in name, a TOML path or a Scenario)."""
    return EdgeClusterEnv(scenario, **kwargs)


def env(scenario: Any = "edge-default", **kwargs: Any) -> pettingzoo.AECEnv:
    """The edge-cluster env as an AECEnv: the agents act one after another within a round."""
    return parallel_to_aec(parallel_env(scenario, **kwargs))


def _register() -> None:
    # Importing twice (a reload) finds the same entry points registered and registers nothing, so
    # PettingZoo's "Overriding environment" warning is kept for real overrides.
    for env_id, points in ENTRY_POINTS.items():
        for kind, entry_point in points.items():
            registry = pettingzoo.aec_registry if kind == "aec" else pettingzoo.parallel_registry
            spec = registry.get(env_id)
            if spec is None or spec.entry_point != entry_point:
                pettingzoo.register(kind, env_id, entry_point=entry_point)


def make(env_id: str = ENV_ID, **kwargs: Any) -> pettingzoo.ParallelEnv:
    """`pettingzoo.make("parallel", env_id, **kwargs)`, with an unknown id as a ValueError."""
    try:
        return pettingzoo.make("parallel", env_id, **kwargs)
    except FailedToImport:
        raise  # a registered id whose module failed to import: not an unknown id
    except PettingZooRegistryError as exc:  # not found, or malformed
        raise ValueError(f"unknown environment id {env_id!r} ({type(exc).__name__}). Fix: use {ENV_ID!r} or "
                         f"{GEO_ENV_ID!r}, the environments this package registers") from None


_register()

__all__ = ["ENV_ID", "GEO_ENV_ID", "EdgeClusterEnv", "GeoSitesEnv", "env", "make", "parallel_env"]
