"""The graph layout has one home (`envs.graph`): the arrays it builds, the feature columns it names,
the model's input sizes, the collate's edge types and the exported program's interface agree."""

from __future__ import annotations

import pytest

from envs.graph import EDGE_TYPES, FORWARD_EDGES, VERTEX_TYPES, feature_dims, feature_layout, graph_arrays, reverse
from tests.helpers import small


def rounds(sc, count: int = 6) -> list[dict]:
    """Observations of the first rounds of a min-heuristic episode: the first has nothing running."""
    from agents.registry import make_policy
    from envs.episode import run_episode

    out = []
    run_episode(sc, make_policy("min", sc), 0, on_round=lambda info: out.append(info.obs) if len(out) < count else None)
    return out


@pytest.mark.parametrize("name", ["synthetic-3", "edge-default", "hetero-6"])
def test_arrays_columns_and_model_inputs_have_the_same_widths(name):
    from agents.learned.model import ModelConfig, TapFingerNet

    sc = small(name, tasks=20)
    dims = feature_dims(len(sc.task_types), sc.num_resources)
    columns = feature_layout(sc)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=8))
    assert list(dims) == list(columns) == list(VERTEX_TYPES)
    empty_running = False
    for obs in rounds(sc):
        g = graph_arrays(obs, sc)
        empty_running |= g["running_x"].shape[0] == 0
        for k in VERTEX_TYPES:
            assert g[f"{k}_x"].shape[1] == dims[k] == len(columns[k]) == net.encoder.inp[k].in_features, k
    assert empty_running  # the width of an empty vertex set is checked too


def test_edge_types_are_the_forward_types_and_their_reverses_in_model_order():
    assert EDGE_TYPES == (("node", "in", "cluster"), ("cluster", "rev_in", "node"),
                          ("pending", "visible_to", "cluster"), ("cluster", "rev_visible_to", "pending"),
                          ("running", "placed_on", "node"), ("node", "rev_placed_on", "running"))
    assert [reverse(et) for et, _ in FORWARD_EDGES] == list(EDGE_TYPES[1::2])


def test_collate_and_program_interface_follow_the_layout():
    from agents.export_format import GRAPH_INPUTS, graph_feeds
    from agents.learned.acting import round_arrays
    from agents.learned.batch import collate

    sc = small("edge-default", tasks=20)
    obs = rounds(sc)[-1]
    batch = collate([round_arrays(obs, sc)])
    assert tuple(batch.edges) == EDGE_TYPES and tuple(batch.x) == VERTEX_TYPES
    assert tuple(graph_feeds(obs, sc)) == GRAPH_INPUTS
    assert {key for _, key in FORWARD_EDGES} <= set(GRAPH_INPUTS)
