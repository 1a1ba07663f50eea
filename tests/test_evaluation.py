"""The evaluation harness: common seeds, determinism, the results.json schema, plots, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tapfinger.cli import main
from tapfinger.evaluation import EvalConfig, format_table, run_evaluation, write_results
from tapfinger.metrics import mean_ci
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
    from tapfinger.plots import write_plots
    for p in write_plots(res, tmp_path):
        assert p.stat().st_size > 1000
    assert "bound" in format_table(res)


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
