"""The evaluation harness: common seeds, determinism, the results.json schema, plots, CLI errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agents.registry import make_policy
from tapfinger.evaluation.bounds import lower_bound
from tapfinger.cli.main import main
from tapfinger.evaluation.harness import EvalConfig, format_table, run_evaluation, write_results
from tapfinger.evaluation.metrics import mean_ci
from envs.episode import run_episode
from tapfinger.sim.workload import make_workload
from tests.helpers import small


def evaluate(workers: int):
    cfg = EvalConfig(small("hetero-6", tasks=40), ["greedy", "random", "min"], [5, 6, 7], workers=workers,
                     progress=False)
    return run_evaluation(cfg)


def test_identical_seeds_give_identical_results_in_parallel_or_not():
    a, b = evaluate(1), evaluate(2)
    for name in ["greedy", "random", "min", "bound"]:
        assert a["policies"][name]["avg_jct"]["per_seed"] == b["policies"][name]["avg_jct"]["per_seed"]


def test_results_schema_and_plots(tmp_path):
    res = evaluate(1)
    path = write_results(res, tmp_path)
    data = json.loads(path.read_text())
    assert data["scenario"] == "hetero-6" and data["seeds"] == [5, 6, 7]
    assert data["best_heuristic"] == min(["greedy", "random", "min"],
                                         key=lambda n: data["policies"][n]["avg_jct"]["mean"])
    for name in ["greedy", "random", "min"]:
        p = data["policies"][name]
        a = p["avg_jct"]
        assert set(a) == {"mean", "ci95", "per_seed"} and len(a["per_seed"]) == 3
        assert a["ci95"][0] <= a["mean"] <= a["ci95"][1]
        assert a["mean"] == pytest.approx(np.mean(a["per_seed"]))
        for key in ["p50_jct", "p95_jct", "p99_jct", "makespan", "decisions_per_s", "diff_vs_best"]:
            assert set(p[key]) == {"mean", "ci95", "per_seed"}
        assert set(p["utilisation"]) == {"cpu", "gpu"}
        assert p["unfinished_tasks"] == 0 and p["invalid_actions"] == 0
    best = data["best_heuristic"]
    assert data["policies"][best]["diff_vs_best"]["per_seed"] == [0.0, 0.0, 0.0]
    # common random numbers: the bound is a property of the seed's tasks, the same for all policies
    assert all(b <= min(data["policies"][n]["avg_jct"]["per_seed"][i] for n in ["greedy", "random", "min"])
               for i, b in enumerate(data["policies"]["bound"]["avg_jct"]["per_seed"]))
    from tapfinger.evaluation.plots import write_plots
    plots = write_plots(res, tmp_path)
    assert sorted(p.name for p in plots) == ["avg_jct.png", "in_system.png", "jct_cdf.png"]
    for p in plots:
        assert p.stat().st_size > 1000
        assert_real_png(p)
    assert "bound" in format_table(res)

    # The values, recomputed from separate episodes (common random numbers: same seed, same
    # tasks) with numpy: per-task JCT records -> avg / percentiles / makespan / utilisation.
    sc = small("hetero-6", tasks=40)
    capacity = np.array([sum(n[r] for c in sc.clusters for n in c.nodes) for r in range(2)])
    for name in ["greedy", "random", "min"]:
        p = data["policies"][name]
        for i, seed in enumerate([5, 6, 7]):
            rec = run_episode(sc, make_policy(name, sc, seed=seed), seed)
            jct = rec.records["jct"]
            assert (jct >= 1).all() and jct.size == 40
            makespan = int(rec.records["finish"].max()) + 1
            assert p["avg_jct"]["per_seed"][i] == pytest.approx(jct.mean())
            for key, q in [("p50_jct", 50), ("p95_jct", 95), ("p99_jct", 99)]:
                assert p[key]["per_seed"][i] == pytest.approx(np.percentile(jct, q))
            assert p["makespan"]["per_seed"][i] == makespan
            util = rec.busy[:makespan].sum(axis=0) / (makespan * capacity)
            assert [p["utilisation"][r]["per_seed"][i] for r in ("cpu", "gpu")] == pytest.approx(util.tolist())
            assert 0 < util.min() and util.max() <= 1
            # relations that hold whatever the policy: percentiles ordered within the JCT range,
            # the makespan covers every task's stay, a JCT is at least the task's bound
            p50, p95, p99 = (p[k]["per_seed"][i] for k in ("p50_jct", "p95_jct", "p99_jct"))
            assert jct.min() <= p50 <= p95 <= p99 <= jct.max()
            assert makespan >= jct.max() and makespan >= (rec.records["arrival"] + jct).max()
            assert 0 < p["decisions_per_s"]["per_seed"][i] < float("inf")
            bound = lower_bound(sc, make_workload(sc, seed))[0]
            assert (jct >= bound).all()
            assert data["policies"]["bound"]["avg_jct"]["per_seed"][i] == pytest.approx(bound.mean())
        # paired differences: this policy's per-seed avg JCT minus the best heuristic's, same seed
        assert p["diff_vs_best"]["per_seed"] == pytest.approx(
            (np.array(p["avg_jct"]["per_seed"]) - np.array(data["policies"][best]["avg_jct"]["per_seed"])).tolist())


def assert_real_png(path):
    """A PNG that decodes to a plot-sized image with something drawn on it."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.load()
        width, height = img.size
        assert width >= 300 and height >= 200
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = np.unique((pixels[:, 0].astype(np.int64) << 16) | (pixels[:, 1].astype(np.int64) << 8) | pixels[:, 2])
    assert colours.size > 10  # not a blank canvas: axes, text and data in several colours
    assert (pixels != 255).any(axis=1).mean() > 0.01


def test_mean_ci_is_student_t():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and lo == pytest.approx(2.5 - 3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    assert mean_ci([2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_cli_evaluate_writes_results(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--scenario", "synthetic-3", "--policies", "min,greedy", "--seeds", "2",
                 "--out", str(out), "--workers", "1", "--quiet", "--no-plots"]) == 0
    assert "greedy" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["seeds"] == [1000, 1001]


def test_cli_unknown_policy_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--policies", "nonsense", "--out", str(tmp_path), "--quiet"]) == 2
    assert "unknown policy 'nonsense'" in capsys.readouterr().err


def test_cli_tapfinger_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--scenario", "synthetic-6", "--policies", "tapfinger", "--out", str(tmp_path),
                 "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_policies_are_cached_per_scenario_not_per_name():
    # Two scenarios with one name but other windows and nodes, evaluated in one process: each
    # gets its own policies (a policy built for one must never serve the other).
    a = small("hetero-6", tasks=30)
    clusters = tuple(dataclasses.replace(c, nodes=c.nodes + c.nodes) for c in a.clusters)
    b = dataclasses.replace(a, window_size=a.window_size - 4, clusters=clusters)
    assert a.name == b.name and a != b
    names, seeds = ["greedy", "tiresias"], [3, 4]
    for sc in (a, b, a):
        res = run_evaluation(EvalConfig(sc, names, seeds, workers=1, progress=False))
        for name in names:
            alone = [run_episode(sc, make_policy(name, sc, seed=s), s).avg_jct for s in seeds]
            assert res["policies"][name]["avg_jct"]["per_seed"] == pytest.approx(alone, rel=0, abs=0), name


def test_serial_evaluation_restores_the_callers_thread_settings(monkeypatch):
    import os

    import torch

    import envs.episode

    seen = []
    real = envs.episode.run_episode

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(envs.episode, "run_episode", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run_evaluation(EvalConfig(small("synthetic-3", tasks=20), ["min"], [1, 2], workers=1, progress=False))
        assert seen == [1, 1]  # one thread while evaluating ...
        assert torch.get_num_threads() == 3  # ... and the caller's count afterwards
        assert "OMP_NUM_THREADS" not in os.environ
    finally:
        torch.set_num_threads(before)
