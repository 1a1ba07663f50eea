"""The geo evaluation (issue 16): results.json keys and forms, CIs, common random numbers,
determinism serial or in parallel, Ctrl-C keeps finished episodes, the plots, and the CLI's geo
dispatch with its errors.

Two small policies of this file (`Local`, `Spread`) make the harness's tests independent of the
registered geo heuristics; the CLI and script tests run the registered ones."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agents.geo.base import GeoPolicy
from agents.geo.registry import GEO_POLICY_NAMES
from envs.geo_episode import run_geo_episode
from tapfinger.cli.main import main
from tapfinger.evaluation import geo_harness
from tapfinger.evaluation.geo_harness import GEO_METRICS, evaluate_geo, format_geo_table
from tapfinger.sim.geo.engine import GeoDecision
from tapfinger.sim.geo.scenario import draw_jobs, geo_scenario_data, load_geo_scenario
from tests.test_evaluation import assert_real_png

SEEDS = [3, 4, 5]


class Local(GeoPolicy):
    """PS and one worker at the site with the most passes left, when they fit: no cost but latency."""

    name = "local"

    def decide(self, engine):
        used = np.zeros_like(engine.capacity)
        placements = {}
        for i in engine.pending():
            r = int(np.argmax(engine.passes_left[i]))
            need = engine.worker_need[i] + engine.ps_need[i]
            if np.all(used[r] + need <= engine.capacity[r]):
                workers = np.zeros(engine.R, dtype=np.int64)
                workers[r] = 1
                placements[int(i)], used[r] = (r, workers), used[r] + need
        return GeoDecision(placements)


class Spread(GeoPolicy):
    """PS at the job's biggest data site, a worker on every site with passes left (exchange costs),
    and every movable block of sites without room moved to the PS's site within the links."""

    name = "spread"

    def decide(self, engine):
        used = np.zeros_like(engine.capacity)
        link = np.zeros((engine.R, engine.R))
        placements, moves = {}, []
        for i in engine.pending():
            left = engine.passes_left[i]
            ps = int(np.argmax(left))
            if np.any(used[ps] + engine.ps_need[i] > engine.capacity[ps]):
                continue
            used[ps] += engine.ps_need[i]
            workers = np.zeros(engine.R, dtype=np.int64)
            for r in np.flatnonzero(left):
                if np.all(used[r] + engine.worker_need[i] <= engine.capacity[r]):
                    workers[r], used[r] = 1, used[r] + engine.worker_need[i]
                elif r != ps:
                    moves += self._move(engine, int(i), int(r), ps, link)
            placements[int(i)] = (ps, workers)
        return GeoDecision(placements, tuple(moves))

    @staticmethod
    def _move(engine, i, src, dst, link):
        n = int(engine.movable_blocks(i)[src])
        room = engine.link_mb[src, dst]
        if room > 0:
            n = min(n, int((room - link[src, dst]) // engine.block_mb[i]))
        if n < 1:
            return []
        link[src, dst] += n * engine.block_mb[i]
        return [(i, src, dst, n)]


class LearnedLocal(Local):
    """`Local` marked as learned: never the best heuristic, whatever its cost."""

    name = "learned-local"
    learned = True


POLICIES = {"local": Local, "spread": Spread}


@pytest.fixture(scope="module")
def geo6():
    return load_geo_scenario("geo-6")


@pytest.fixture(scope="module")
def results(geo6):
    return evaluate_geo(geo6, POLICIES, SEEDS, workers=1, progress=False)


def test_results_keys_forms_and_cis(results, tmp_path, geo6):
    assert results["scenario"] == "geo-6" and results["family"] == "geo" and results["seeds"] == SEEDS
    assert results["sites"] == geo6.num_sites and results["jobs"] == geo6.jobs.count
    res = results["policies"]
    assert set(res) == set(POLICIES)
    for name, e in res.items():
        for key in (*GEO_METRICS, "diff_vs_best"):
            s = e[key]
            assert set(s) == {"mean", "ci95", "per_seed"} and len(s["per_seed"]) == len(SEEDS), (name, key)
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1], (name, key)
            assert s["mean"] == pytest.approx(np.mean(s["per_seed"]))
        parts = sum(np.array(e[k]["per_seed"]) for k in ("latency_cost", "transfer_cost", "exchange_cost"))
        assert e["total_cost"]["per_seed"] == pytest.approx(parts.tolist())
        assert all(0 < v < float("inf") for v in e["decisions_per_second"]["per_seed"])
        assert e["learned"] is False
    # the policies differ in what they pay for: Local never moves data nor places a remote worker
    assert res["local"]["mb_moved"]["per_seed"] == [0.0] * 3 and res["local"]["exchange_cost"]["mean"] == 0
    assert res["spread"]["exchange_cost"]["mean"] > 0 and res["spread"]["mb_moved"]["mean"] > 0
    best = results["best_heuristic"]
    assert best == min(res, key=lambda n: res[n]["total_cost"]["mean"])
    for e in res.values():
        want = np.array(e["total_cost"]["per_seed"]) - np.array(res[best]["total_cost"]["per_seed"])
        assert e["diff_vs_best"]["per_seed"] == pytest.approx(want.tolist())
    # each per-seed value is that of a separate episode of the same seed
    for name, cls in POLICIES.items():
        for i, seed in enumerate(SEEDS):
            alone = run_geo_episode(geo6, cls(), seed)
            assert res[name]["total_cost"]["per_seed"][i] == pytest.approx(alone.total_cost, rel=1e-12)
            assert res[name]["avg_jct"]["per_seed"][i] == pytest.approx(alone.avg_jct)
    # written and read back as strict JSON, with the same values
    geo_harness.write_results(results, tmp_path)
    back = json.loads((tmp_path / "results.json").read_text())
    assert back["policies"]["spread"]["total_cost"] == res["spread"]["total_cost"]
    assert "_episodes" not in back


def test_common_random_numbers(results, geo6):
    episodes = results["_episodes"]
    for seed in SEEDS:
        want = [j.arrival for j in draw_jobs(geo6, seed)]
        for name in POLICIES:
            assert [r["arrival"] for r in episodes[name][seed].records] == want
    # and the seeds differ from each other (else "the same jobs" would be trivially true)
    assert len({tuple(j.blocks for j in draw_jobs(geo6, s)) for s in SEEDS}) == len(SEEDS)


def test_deterministic_serial_or_parallel(results, geo6):
    again = evaluate_geo(geo6, POLICIES, SEEDS, workers=2, progress=False)
    for name in POLICIES:
        for key in GEO_METRICS[:-1]:  # decide time aside: it is measured, not simulated
            assert again["policies"][name][key]["per_seed"] == results["policies"][name][key]["per_seed"]


def test_learned_policy_is_never_the_best_heuristic(geo6):
    res = evaluate_geo(geo6, {"spread": Spread, "learned-local": LearnedLocal}, SEEDS[:2], progress=False)
    assert res["policies"]["learned-local"]["learned"] is True
    assert res["best_heuristic"] == "spread"
    assert res["policies"]["spread"]["diff_vs_best"]["per_seed"] == [0.0, 0.0]


def test_table_and_cost_parts_plot(results, tmp_path):
    table = format_geo_table(results)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| policy | total cost") and len(rows) == 1 + len(POLICIES)
    assert "diff vs " + results["best_heuristic"] in rows[0]
    from tapfinger.evaluation.geo_plots import write_geo_plots

    paths = write_geo_plots(results, tmp_path)
    assert [p.name for p in paths] == ["cost_parts.png"]
    assert_real_png(paths[0])


def test_scaling_plot(tmp_path):
    from tapfinger.evaluation.geo_plots import scaling_plot

    def point(x):
        return {"x": x, "policies": {n: {"total_cost": {"mean": k * x, "ci95": [k * x - 5, k * x + 5]}}
                                     for n, k in (("a", 10.0), ("b", 12.0))}}
    path = scaling_plot([point(x) for x in (30, 10, 20)], "sites", tmp_path / "cost_vs_sites.png")
    assert_real_png(path)


def test_ctrl_c_keeps_finished_episodes_and_a_rerun_resumes(geo6, tmp_path, monkeypatch):
    real = geo_harness.run_geo_episode
    calls = []

    def stop_on_third(scenario, policy, seed, **kw):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(scenario, policy, seed, **kw)

    monkeypatch.setattr(geo_harness, "run_geo_episode", stop_on_third)
    with pytest.raises(KeyboardInterrupt, match="kept 2 of 6 episodes"):
        evaluate_geo(geo6, POLICIES, SEEDS, out=tmp_path, progress=False)
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(geo_harness, "run_geo_episode", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    res = evaluate_geo(geo6, POLICIES, SEEDS, out=tmp_path, progress=False)
    assert len(calls) == 3 + 4  # the rerun played only the four missing episodes
    assert (tmp_path / "results.json").exists() and not (tmp_path / "episodes.partial.jsonl").exists()
    whole = evaluate_geo(geo6, POLICIES, SEEDS, progress=False)
    for name in POLICIES:
        assert res["policies"][name]["total_cost"] == whole["policies"][name]["total_cost"]


def test_unknown_policy_and_bad_seeds_are_clear_errors(geo6):
    with pytest.raises(ValueError, match="unknown geo policy 'nonsense'"):
        evaluate_geo(geo6, ["nonsense"], [1], progress=False)
    with pytest.raises(ValueError, match="given once"):
        evaluate_geo(geo6, POLICIES, [1, 1], progress=False)


# ---------------------------------------------------------------------------- the command line
def test_cli_evaluate_geo_writes_results_and_plots(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--scenario", "geo-6", "--seeds", "2", "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["family"] == "geo" and data["seeds"] == [1000, 1001]
    default = geo_harness.default_geo_policies("geo-6")
    assert default[:len(GEO_POLICY_NAMES)] == list(GEO_POLICY_NAMES)  # every registered heuristic, first
    assert list(data["policies"]) == default
    assert all(f"| {n}" in printed for n in default) and "| policy | total cost" in printed
    assert_real_png(out / "cost_parts.png")
    assert not (out / "episodes.partial.jsonl").exists()


def test_cli_geo_policies_and_a_toml_file(tmp_path, capsys):
    from tapfinger.sim.geo.scenario import geo_builtin_text

    path = tmp_path / "mine.toml"
    path.write_text(geo_builtin_text("geo-6").replace('name = "geo-6"', 'name = "mine"'))
    out = tmp_path / "ev"
    assert main(["evaluate", "--scenario", str(path), "--policies", "fifo", "--seeds", "1",
                 "--seed-start", "7", "--out", str(out), "--workers", "1", "--quiet", "--no-plots"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["scenario"] == "mine" and data["seeds"] == [7] and list(data["policies"]) == ["fifo"]
    assert not (out / "cost_parts.png").exists()
    capsys.readouterr()
    assert main(["evaluate", "--scenario", "geo-6", "--list-policies"]) == 0
    assert capsys.readouterr().out.split() == geo_harness.geo_policy_names()


@pytest.mark.parametrize("flags, said", [
    (["--policies", "nonsense"], "unknown geo policy 'nonsense'"),
    (["--policies", "okita,fifo", "--checkpoint", "x.pt"], "--checkpoint x.pt: none of the geo policies"),
    (["--policies", "tapfinger-geo", "--checkpoint", "x.pt"], "x.pt"),
    (["--backend", "ray"], "--backend ray: a geo scenario"),
    (["--ray-address", "auto"], "--ray-address: a geo scenario"),
    (["--seeds", "0"], "--seeds 0"),
])
def test_cli_geo_errors_name_the_flag(tmp_path, capsys, flags, said):
    assert main(["evaluate", "--scenario", "geo-6", "--out", str(tmp_path / "ev"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and "Fix:" in err
    assert not (tmp_path / "ev" / "results.json").exists()


def test_cli_scenarios_lists_and_shows_the_geo_built_ins(capsys, tmp_path):
    from tapfinger.sim.geo.scenario import geo_builtin_names

    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in geo_builtin_names():
        sc = load_geo_scenario(name)
        line = next(x for x in lines if x.startswith(name + " "))
        assert f"{sc.num_sites} sites, {sc.jobs.count} jobs over {sc.jobs.arrival_slots} arrival slots" in line
    assert "links 4" in next(x for x in lines if x.startswith("geo-6 "))  # geo-6 has link capacities
    assert "unlimited links" in next(x for x in lines if x.startswith("geo-50 "))
    assert main(["scenarios", "--show", "geo-6"]) == 0
    path = tmp_path / "geo-6.toml"
    path.write_text(capsys.readouterr().out)
    assert load_geo_scenario(path) == load_geo_scenario("geo-6")


def load_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "geo_scaling.py"
    spec = importlib.util.spec_from_file_location("geo_scaling", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_scaling_script_points(geo6):
    script = load_script()
    four = script.with_sites(*geo_scenario_data("geo-6"), 4)
    assert four.num_sites == 4 and four.name == "geo-6-sites4"
    assert four.jobs == dataclasses.replace(geo6.jobs, data_sites=(1, 3))  # geo-6's ranges fit 4 sites
    assert script.with_sites(*geo_scenario_data("geo-6"), 6) == geo6  # the base's own count: the base itself
    two = script.with_sites(*geo_scenario_data("geo-6"), 2)
    assert two.jobs.data_sites == (1, 2)  # lowered to the count
    assert script.with_jobs(geo6, 5).jobs.count == 5 and script.with_jobs(geo6, 5).sites == geo6.sites
    with pytest.raises(ValueError, match="--sites"):
        script.counts("10,x", "--sites")


def test_scaling_script_json_plots_and_rerun(tmp_path, monkeypatch):
    script = load_script()
    argv = ["--base", "geo-6", "--sites", "4,6", "--jobs", "6,12", "--seeds", "2", "--workers", "1", "--quiet",
            "--policies", "drf,fifo", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    summary = json.loads((tmp_path / "geo_scaling.json").read_text())
    sites, jobs = summary["sweeps"]["sites"], summary["sweeps"]["jobs"]
    assert [p["x"] for p in sites] == [p["sites"] for p in sites] == [4, 6]
    assert [p["x"] for p in jobs] == [p["jobs"] for p in jobs] == [6, 12]
    assert sites[1]["policies"] == jobs[1]["policies"]  # the base, in both sweeps, evaluated once
    assert not (tmp_path / "points" / "jobs-12").exists()
    for name in ("cost_vs_sites.png", "cost_vs_jobs.png"):
        assert_real_png(tmp_path / name)
    # a rerun finds every point done: no episode is played again
    monkeypatch.setattr(geo_harness, "run_geo_episode", lambda *a, **k: pytest.fail("an episode ran again"))
    assert script.main(argv) == 0
    assert json.loads((tmp_path / "geo_scaling.json").read_text())["sweeps"] == summary["sweeps"]


def test_default_geo_policies_include_the_learned_one_only_where_it_has_a_checkpoint(tmp_path):
    # geo-6 ships checkpoints/geo/geo-6.pt; geo-50 has none, so a bare evaluation of it runs the heuristics
    from agents.geo.registry import GEO_POLICY_NAMES, shipped_geo_checkpoint

    assert shipped_geo_checkpoint("geo-6").is_file() and not shipped_geo_checkpoint("geo-50").is_file()
    assert geo_harness.default_geo_policies("geo-6") == [*GEO_POLICY_NAMES, "tapfinger-geo"]
    assert geo_harness.default_geo_policies("geo-50") == list(GEO_POLICY_NAMES)
    assert geo_harness.default_geo_policies("geo-50", checkpoint=tmp_path / "c.pt")[-1] == "tapfinger-geo"


def test_cli_checkpoint_reaches_the_learned_geo_policy(tmp_path):
    import shutil

    from agents.geo.registry import shipped_geo_checkpoint

    copy = tmp_path / "mine.pt"
    shutil.copy(shipped_geo_checkpoint("geo-6"), copy)
    out = tmp_path / "ev"
    assert main(["evaluate", "--scenario", "geo-6", "--policies", "tapfinger-geo,fifo", "--checkpoint", str(copy),
                 "--seeds", "1", "--out", str(out), "--quiet", "--no-plots"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert list(data["policies"]) == ["tapfinger-geo", "fifo"] and data["policies"]["tapfinger-geo"]["learned"]
    assert geo_harness.made_by(None) is None
    key = geo_harness.made_by(__import__("functools").partial(len, "a", b=1))
    assert key == "builtins.len('a',)[('b', 1)]"  # stable across processes: no object address in it


def test_the_episode_key_of_a_learned_policy_changes_with_its_checkpoint_content(tmp_path):
    # a retrained checkpoint at the same path must not be served from an older run's cached episodes
    import functools
    import shutil

    from agents.geo.registry import make_geo_policy, shipped_geo_checkpoint

    sc = load_geo_scenario("geo-6")
    path = tmp_path / "c.pt"
    shutil.copy(shipped_geo_checkpoint("geo-6"), path)
    factory = functools.partial(make_geo_policy, "tapfinger-geo", checkpoint=str(path))
    before = geo_harness.geo_job_key(sc, "tapfinger-geo", factory, 1000)
    assert geo_harness.geo_job_key(sc, "tapfinger-geo", factory, 1000) == before
    path.write_bytes(path.read_bytes() + b"\0")
    assert geo_harness.geo_job_key(sc, "tapfinger-geo", factory, 1000) != before
    assert geo_harness.geo_job_key(sc, "okita", None, 1000) == geo_harness.geo_job_key(sc, "okita", None, 1000)


def test_demo_ends_with_the_geo_setting_unless_told_not_to(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--policies", "greedy", "--seeds", "1", "--out", str(out), "--quiet", "--no-plots"]) == 0
    geo = json.loads((out / "geo-6" / "results.json").read_text())
    assert geo["family"] == "geo" and "okita" in geo["policies"] and "tapfinger-geo" in geo["policies"]
    assert list(json.loads((out / "results.json").read_text())["policies"]) == ["greedy", "bound"]
    assert "the geo-distributed setting: geo-6" in capsys.readouterr().out
    bare = tmp_path / "bare"
    assert main(["demo", "--policies", "greedy", "--seeds", "1", "--out", str(bare), "--quiet", "--no-plots",
                 "--geo", ""]) == 0
    assert not (bare / "geo-6").exists()
