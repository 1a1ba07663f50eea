"""The geo PettingZoo env (issue 16): conformance, truthful masks, strict and default modes, the
edge env's entry point, the reward as minus the cost, a simple rule's full episode, and the graph
arrays. Expected values come from envs/geo_env.py's and envs/geo_observations.py's documented
encoding and the engine's rules, never from the env's own output."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test
from pettingzoo.utils.conversions import parallel_to_aec

from envs import EdgeClusterEnv
from envs.geo_env import AGENT, GEO_ENV_ID, GeoSitesEnv, action_from_decision
from envs.geo_graph import EDGE_ATTR_COLUMNS, EDGE_TYPES, FORWARD_EDGES, feature_columns, graph_arrays
from tapfinger.sim.geo.engine import GeoActionError, GeoDecision
from tapfinger.sim.geo.scenario import geo_builtin_text, load_geo_scenario
from tests.test_env_api import only_allowed_warnings


def zeros(env: GeoSitesEnv) -> dict[str, np.ndarray]:
    sc = env.scenario
    W, R = sc.window, sc.num_sites
    return {"ps": np.zeros(W, dtype=np.int64), "workers": np.zeros((W, R), dtype=np.int64),
            "moves": np.zeros((W, R, R), dtype=np.int64)}


def simple_rule(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Oldest job first: its PS at the data site with the most passes left where it fits (else any
    site that fits), as many workers as fit and have work at every data site, and the untouched
    blocks of data sites where no worker fits moved to the PS site (within the link)."""
    W, R = obs["max_workers"].shape
    free = obs["site_capacity"].copy()
    act = {"ps": np.zeros(W, dtype=np.int64), "workers": np.zeros((W, R), dtype=np.int64),
           "moves": np.zeros((W, R, R), dtype=np.int64)}
    link_left = np.where(obs["link_mb"] > 0, obs["link_mb"].astype(float), np.inf)
    for w in np.flatnonzero(obs["job_id"] >= 0):
        need, ps_need, left = obs["job_worker"][w], obs["job_ps"][w], obs["job_passes_left"][w]
        fits = np.flatnonzero((free >= ps_need).all(axis=1))
        if not fits.size:
            continue
        ps = int(fits[np.argmax(left[fits])])
        free[ps] -= ps_need
        act["ps"][w] = ps + 1
        for r in np.flatnonzero(left):
            pos = need > 0
            room = int((free[r][pos] // need[pos]).min()) if pos.any() else R
            n = min(room, obs["max_workers"][w, r], -(-left[r] // obs["job_rate"][w]))
            act["workers"][w, r] = n
            free[r] -= n * need
            if obs["max_workers"][w, r] == 0 and r != ps:
                k = int(min(obs["movable"][w, r], link_left[r, ps] // obs["job_block_mb"][w]))
                act["moves"][w, r, ps] = k
                link_left[r, ps] -= k * obs["job_block_mb"][w]
    return act


def play(env: GeoSitesEnv, seed: int, rule=simple_rule):
    obs, _ = env.reset(seed=seed)
    rewards, infos, terms, truncs = [], None, None, None
    while env.agents:
        assert env.observation_space(AGENT).contains(obs[AGENT])
        obs, rew, terms, truncs, infos = env.step({AGENT: rule(obs[AGENT])})
        rewards.append(rew[AGENT])
    return rewards, infos[AGENT], terms[AGENT], truncs[AGENT]


# ----------------------------------------------------------------------------- conformance
def test_parallel_and_aec_api_and_seeding():
    with only_allowed_warnings():
        parallel_api_test(EdgeClusterEnv("geo-6"), num_cycles=500)
        api_test(parallel_to_aec(GeoSitesEnv("geo-6")), num_cycles=100)
        parallel_seed_test(lambda: GeoSitesEnv("geo-6"))


def test_edge_cluster_env_gives_the_geo_env_for_every_form_of_geo_scenario(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(geo_builtin_text("geo-6"))
    for spec in ("geo-6", path, str(path), load_geo_scenario("geo-6")):
        env = EdgeClusterEnv(spec, strict=True)
        assert type(env) is GeoSitesEnv and isinstance(env, EdgeClusterEnv), spec
        assert env.possible_agents == [AGENT] and env.strict and env.scenario.num_sites == 6
    assert type(EdgeClusterEnv(scenario="geo-6")) is GeoSitesEnv
    assert type(EdgeClusterEnv("hetero-6")) is EdgeClusterEnv and type(EdgeClusterEnv()) is EdgeClusterEnv


def test_pickled_and_copied_envs_continue_the_same_episode():
    env = EdgeClusterEnv("geo-6")
    obs, _ = env.reset(seed=4)
    for _ in range(3):
        obs, *_ = env.step({AGENT: simple_rule(obs[AGENT])})
    twins = [pickle.loads(pickle.dumps(env)), copy.deepcopy(env)]
    for twin in twins:
        assert type(twin) is GeoSitesEnv
    for _ in range(5):
        act = {AGENT: simple_rule(obs[AGENT])}
        obs, rew, *_ = env.step(act)
        for twin in twins:
            o2, rew2, *_ = twin.step(act)
            assert rew2 == rew and all(np.array_equal(o2[AGENT][k], v) for k, v in obs[AGENT].items())


def test_registered_as_parallel_and_aec():
    import importlib
    import warnings

    import pettingzoo

    import envs.geo_env

    from envs import ENV_ID, make

    assert type(pettingzoo.make("parallel", GEO_ENV_ID, scenario="geo-6")) is GeoSitesEnv
    assert type(make(ENV_ID, scenario="geo-6")) is GeoSitesEnv  # the edge id gives it too
    shown = make(GEO_ENV_ID, scenario="geo-6", render_mode="ansi")
    shown.reset(seed=0)
    assert shown.render().startswith("slot 0 | pending ")
    aec = pettingzoo.make("aec", GEO_ENV_ID)
    aec.reset(seed=0)
    assert aec.agent_selection == AGENT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # importing again must not "override" our own registration
        importlib.reload(envs.geo_env)


# ----------------------------------------------------------------------------- masks
def check_masks(env: GeoSitesEnv, obs: dict[str, np.ndarray]) -> int:
    """Every masked option is invalid and every unmasked one, alone, valid; how many were tried."""
    W, R = obs["max_workers"].shape
    mw, tried = env.scenario.max_workers_per_site, 0

    def valid(ps=None, workers=None, moves=None, row=0) -> bool:
        act = zeros(env)
        for key, value in (("ps", ps), ("workers", workers), ("moves", moves)):
            if value is not None:
                act[key][row] = value
        return env.decision_of(act)[1] is None

    for w in range(W):
        for option in range(1, R + 1):
            assert valid(ps=option, row=w) == bool(obs["ps_mask"][w, option]), (w, option)
            tried += 1
        sites = np.flatnonzero(obs["ps_mask"][w, 1:])
        for r in range(R):
            others = sites[sites != r]
            if not others.size:
                continue
            ps, n = int(others[0]) + 1, int(obs["max_workers"][w, r])
            counts = np.zeros(R, dtype=np.int64)
            counts[r] = n
            assert n == 0 or valid(ps=ps, workers=counts, row=w), (w, r, n)
            if n < mw:  # one more does not fit alone (at mw, one more is outside the action space)
                counts[r] = n + 1
                assert not valid(ps=ps, workers=counts, row=w), (w, r, n)
            tried += 2
            for dst in range(R):
                k = int(obs["movable"][w, r])
                link = obs["link_mb"][r, dst]
                if dst == r or (link and link < (k + 1) * obs["job_block_mb"][w]):
                    continue  # the link refuses what the blocks allow: the masks are per job alone
                moves = np.zeros((R, R), dtype=np.int64)
                moves[r, dst] = k
                assert k == 0 or valid(moves=moves, row=w), (w, r, dst, k)
                moves[r, dst] = k + 1
                assert not valid(moves=moves, row=w), (w, r, dst, k)
                tried += 2
    return tried


@pytest.mark.parametrize("name", ["geo-6", "tiny"])
def test_masks_are_truthful_over_an_episode(name):
    from tests.test_geo_engine import tiny

    env = GeoSitesEnv("geo-6" if name == "geo-6" else tiny(max_workers_per_site=4))
    obs, _ = env.reset(seed=2)
    tried, slots = 0, 0
    while env.agents:
        o = obs[AGENT]
        assert (o["ps_mask"][:, 0] == 1).all() and not o["ps_mask"][o["job_id"] < 0, 1:].any()
        if slots % 3 == 0:
            tried += check_masks(env, o)
        obs, *_ = env.step({AGENT: simple_rule(o)})
        slots += 1
    assert tried > 200


# ----------------------------------------------------------------------------- invalid actions
MALFORMED = [
    ({"ps": np.zeros(3, dtype=np.int64)}, "key 'ps' has shape (3,), not (6,)"),
    ({"ps": np.full(6, -1)}, "key 'ps' holds a negative number"),
    ({"ps": np.full(6, 7)}, "key 'ps' holds 7 at (0,), above 6"),
    ({"workers": np.full((6, 6), np.nan)}, "key 'workers' holds a non-finite number"),
    ({"workers": np.full((6, 6), 0.5)}, "key 'workers' holds a fractional number"),
    ({"ps": [True] + [False] * 5}, "key 'ps' holds booleans"),
    ({"ps": np.zeros(6, dtype=bool)}, "key 'ps' holds booleans"),
    ({"moves": "none"}, "key 'moves' is the string"),
    ({"move": np.zeros(6)}, "key(s) ['move'] are no action keys"),
    (np.zeros(6), "expected a dict with the keys ps, workers, moves"),
]


@pytest.mark.parametrize("action, message", MALFORMED)
def test_a_malformed_action_is_named_in_strict_mode_and_a_counted_no_op_by_default(action, message):
    strict, lenient = GeoSitesEnv("geo-6", strict=True), GeoSitesEnv("geo-6")
    strict.reset(seed=1)
    before = pickle.dumps(strict.engine)
    with pytest.raises(GeoActionError) as err:
        strict.step({AGENT: action})
    assert str(err.value).startswith("slot 0: scheduler_0: malformed action: ") and message in str(err.value)
    assert pickle.dumps(strict.engine) == before  # nothing changed
    check_no_op(lenient, action, message)


def check_no_op(env: GeoSitesEnv, action, message: str, seed: int = 1) -> None:
    env.reset(seed=seed)
    left = env.engine.passes_left.copy()
    _, rew, _, _, infos = env.step({AGENT: action})
    info = infos[AGENT]
    assert info["invalid_actions"] == 1 and message in info["problem"] and info["slot"] == 1
    np.testing.assert_array_equal(env.engine.passes_left, left)  # the whole decision was dropped
    assert env.engine.transfer_cost.sum() == env.engine.exchange_cost.sum() == 0.0
    assert rew[AGENT] == -info["latency_cost"] and rew[AGENT] < 0  # the slot passed all the same


def test_an_infeasible_decision_drops_the_whole_decision_and_strict_mode_raises():
    env = GeoSitesEnv("geo-6")
    obs, _ = env.reset(seed=0)
    o = obs[AGENT]
    act = simple_rule(o)
    assert env.decision_of(act)[1] is None and act["workers"][0].any()
    empty_row = int(np.flatnonzero(o["job_id"] < 0)[0])
    act["ps"][empty_row] = 1  # the good part (row 0) is dropped with the bad one
    check_no_op(env, act, f"window row {empty_row} holds no job", seed=0)
    strict = GeoSitesEnv("geo-6", strict=True)
    strict.reset(seed=0)
    with pytest.raises(GeoActionError, match=f"slot 0: scheduler_0: window row {empty_row} holds no job"):
        strict.step({AGENT: act})
    act["ps"][empty_row], act["ps"][0] = 0, 0  # row 0 keeps its workers, without a PS
    with pytest.raises(GeoActionError, match=f"job {o['job_id'][0]}: workers need a parameter server"):
        strict.step({AGENT: act})
    _, _, _, _, infos = strict.step({AGENT: simple_rule(o)})  # still at slot 0, and a good action plays
    assert infos[AGENT]["slot"] == 1 and infos[AGENT]["invalid_actions"] == 0


@pytest.mark.parametrize("strict", [False, True])
def test_no_dict_or_an_unknown_agent_raises_in_both_modes_and_no_action_is_an_empty_slot(strict):
    env = GeoSitesEnv("geo-6", strict=strict)
    env.reset(seed=0)
    with pytest.raises(GeoActionError, match="expected a dict"):
        env.step([0])
    with pytest.raises(GeoActionError, match="'cluster_0' is not an agent of this env"):
        env.step({"cluster_0": None})
    for empty in ({}, {AGENT: None}, {AGENT: {}}):
        _, _, _, _, infos = env.step(empty)
        assert infos[AGENT]["invalid_actions"] == 0 and infos[AGENT]["problem"] is None
    assert env.engine.passes_done.sum() == 0 and env.engine.slot == 3


# ----------------------------------------------------------------------------- episodes
@pytest.mark.parametrize("seed", [0, 7])
def test_a_simple_rule_completes_and_the_rewards_sum_to_minus_the_total_cost(seed):
    env = EdgeClusterEnv("geo-6")
    rewards, info, terminated, truncated = play(env, seed)
    e = env.engine
    assert terminated and not truncated and (e.completion >= 0).all() and not env.agents
    assert info["invalid_actions"] == 0
    assert sum(rewards) == pytest.approx(-e.total_cost(), rel=1e-12)
    assert sum(rewards) == pytest.approx(-(info["latency_cost"] + info["transfer_cost"] + info["exchange_cost"]))
    again, *_ = play(env, seed)
    assert again == rewards  # same seed, same episode


def test_an_unplayed_episode_is_truncated_at_max_slots():
    from tests.test_geo_engine import tiny

    env = GeoSitesEnv(tiny(max_slots=6))
    rewards, _, terminated, truncated = play(env, 3, rule=lambda obs: None)
    assert truncated and not terminated and len(rewards) == 6
    assert sum(rewards) == pytest.approx(-env.engine.total_cost())


def test_action_from_decision_is_the_inverse_of_decision_of():
    from tests.test_geo_engine import random_valid

    env = GeoSitesEnv("geo-6")
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(30):
        d = random_valid(env.engine, rng)
        window = set(obs[AGENT]["job_id"].tolist())
        d = GeoDecision({i: p for i, p in d.placements.items() if i in window and p[1].any()},
                        tuple(sorted(m for m in d.moves if m[0] in window)))
        back, problem = env.decision_of(action_from_decision(obs[AGENT]["job_id"], d, env.scenario))
        assert problem is None and back.moves == d.moves
        assert back.placements.keys() == d.placements.keys()
        for i, (ps, workers) in d.placements.items():
            assert back.placements[i][0] == ps and np.array_equal(back.placements[i][1], workers)
        obs, *_ = env.step({AGENT: action_from_decision(obs[AGENT]["job_id"], d, env.scenario)})
    with pytest.raises(ValueError, match="not in the window"):
        action_from_decision(np.full(6, -1), GeoDecision(moves=((0, 0, 1, 1),)), env.scenario)


# ----------------------------------------------------------------------------- graph arrays
def graph_rounds(name: str, slots: int = 12):
    env = GeoSitesEnv(name)
    obs, _ = env.reset(seed=3)
    for _ in range(slots):
        yield env, obs[AGENT]
        obs, *_ = env.step({AGENT: simple_rule(obs[AGENT])})


@pytest.mark.parametrize("name", ["geo-6", "geo-50"])
def test_graph_arrays_follow_the_layout_and_the_observation(name):
    for env, o in graph_rounds(name, 12 if name == "geo-6" else 3):
        sc, g = env.scenario, graph_arrays(o, env.scenario)
        R, cols = sc.num_sites, feature_columns(sc.resources)
        rows = np.flatnonzero(o["job_id"] >= 0)
        assert g["site_x"].shape == (R, len(cols["site"])) and g["job_x"].shape == (len(rows), len(cols["job"]))
        assert g["job_id"].tolist() == o["job_id"][rows].tolist() and g["job_window_row"].tolist() == rows.tolist()
        for (src, _, dst), key in FORWARD_EDGES:
            edge, attr = g[f"{key}_edge"], g[f"{key}_attr"]
            assert edge.shape == (2, attr.shape[0]) and attr.shape[1] == len(EDGE_ATTR_COLUMNS[key]), key
            assert (edge[0] < len(g[f"{src}_x"])).all() and (edge[1] < len(g[f"{dst}_x"])).all(), key
            assert np.isfinite(attr).all() and attr.dtype == np.float32, key
        assert g["link_edge"].shape[1] == R * (R - 1) and (g["link_edge"][0] != g["link_edge"][1]).all()
        a, b = g["link_edge"]
        np.testing.assert_allclose(g["link_attr"][:, 0] * o["cost"].max(), o["cost"][a, b], rtol=1e-5)
        np.testing.assert_array_equal(g["link_attr"][:, 2], o["link_mb"][a, b] == 0)
        j, s = g["data_edge"]
        assert len(j) == int((o["job_passes_left"][rows] > 0).sum()) and (o["job_passes_left"][rows][j, s] > 0).all()
        share = np.bincount(j, weights=g["data_attr"][:, 2], minlength=len(rows))
        np.testing.assert_allclose(share, 1.0, rtol=1e-5)  # the shares of a job's passes left sum to 1
        j, s = g["ps_edge"]
        assert (o["job_ps_site"][rows][j] == s).all() and len(j) == int((o["job_ps_site"][rows] >= 0).sum())
        j, s = g["worker_edge"]
        np.testing.assert_allclose(g["worker_attr"][:, 0] * sc.max_workers_per_site, o["job_workers"][rows][j, s])
        assert len(j) == int((o["job_workers"][rows] > 0).sum())
        assert np.isfinite(g["site_x"]).all() and np.isfinite(g["job_x"]).all()


def test_hetero_graph_has_every_edge_type_and_its_reverse():
    pytest.importorskip("torch_geometric")
    from envs.geo_graph import build_hetero_graph

    env, o = list(graph_rounds("geo-6", 4))[-1]
    g, a = build_hetero_graph(o, env.scenario), graph_arrays(o, env.scenario)
    assert set(g.edge_types) == set(EDGE_TYPES) and g["site"].num_nodes == 6
    assert g["job"].num_nodes == int((o["job_id"] >= 0).sum()) > 0
    assert g["job", "worker", "site"].edge_index.shape[1] > 0  # the rule placed workers: the edges exist
    for (src, rel, dst), key in FORWARD_EDGES:
        fwd, rev = g[src, rel, dst], g[dst, f"rev_{rel}", src]
        assert np.array_equal(fwd.edge_index.numpy(), a[f"{key}_edge"])
        assert np.array_equal(rev.edge_index.numpy(), a[f"{key}_edge"][::-1])
        assert np.array_equal(rev.edge_attr.numpy(), fwd.edge_attr.numpy())


def test_geo_50_steps_with_its_large_move_space():
    env = EdgeClusterEnv("geo-50")
    obs, _ = env.reset(seed=0)
    W, R = env.scenario.window, env.scenario.num_sites
    assert env.action_space(AGENT)["moves"].shape == (W, R, R) == (16, 50, 50)
    for _ in range(20):
        obs, _, _, _, infos = env.step({AGENT: simple_rule(obs[AGENT])})
        assert infos[AGENT]["invalid_actions"] == 0
        assert env.observation_space(AGENT).contains(obs[AGENT])
    assert env.engine.passes_done.sum() > 0
