"""PNG plots of geo evaluations (issue 16): the cost parts per policy (`cost_parts.png`, from one
`evaluate_geo`), and the patent's figures 2-3 shape, total cost against the number of sites and
against the number of jobs with one line per policy and its 95% CI band (`cost_vs_sites.png`,
`cost_vs_jobs.png`, from a sweep: `scripts/geo_scaling.py`). Matplotlib's Agg backend, as plots.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tapfinger.evaluation.plots import _pyplot, _save

GEO_PLOT_FILES = ("cost_parts.png",)  # what write_geo_plots writes
SCALING_PLOTS = {"sites": "cost_vs_sites.png", "jobs": "cost_vs_jobs.png"}  # axis -> file
PARTS = (("latency_cost", "latency", "tab:blue"), ("transfer_cost", "data transfer", "tab:orange"),
         ("exchange_cost", "parameter exchange", "tab:green"))


def write_geo_plots(results: dict, out_dir: Path) -> list[Path]:
    """The plots of one evaluation (results of `evaluate_geo`, or its results.json read back)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [cost_parts_plot(results, out_dir / GEO_PLOT_FILES[0])]


def cost_parts_plot(results: dict, path: Path) -> Path:
    """One bar per policy (lowest total first): its mean latency, transfer and exchange costs stacked,
    and a whisker for the 95% CI of the total (the parts' means add up to the total's mean)."""
    plt = _pyplot()
    res = results["policies"]
    names = sorted(res, key=lambda n: res[n]["total_cost"]["mean"])
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    bottom = np.zeros(len(names))
    for key, label, colour in PARTS:
        heights = np.array([res[n][key]["mean"] for n in names])
        ax.bar(names, heights, bottom=bottom, label=label, color=colour)
        bottom += heights
    totals = np.array([res[n]["total_cost"]["mean"] for n in names])
    err = np.array([[m - res[n]["total_cost"]["ci95"][0], res[n]["total_cost"]["ci95"][1] - m]
                    for n, m in zip(names, totals, strict=True)]).T.reshape(2, len(names))
    ax.errorbar(names, totals, yerr=err, fmt="none", ecolor="k", capsize=4, label="total, 95% CI")
    ax.set_ylabel("cost per episode (mean over seeds)")
    ax.set_title(f"{results['scenario']}: {len(results['seeds'])} seeds, cost by part")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(plt, fig, Path(path))


def scaling_plot(points: list[dict], axis: str, path: Path, title: str = "") -> Path:
    """Total cost against `axis` ("sites" or "jobs"): `points` are [{"x": value, "policies": {NAME:
    {"total_cost": summary}}}, ...] (one evaluation each); a line per policy with its CI band."""
    plt = _pyplot()
    points = sorted(points, key=lambda p: p["x"])
    names = list(dict.fromkeys(n for p in points for n in p["policies"]))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for n in names:
        here = [p for p in points if n in p["policies"]]
        xs = np.array([p["x"] for p in here], dtype=float)
        s = [p["policies"][n]["total_cost"] for p in here]
        mean = np.array([v["mean"] for v in s], dtype=float)
        lo = np.array([v["ci95"][0] for v in s], dtype=float)
        hi = np.array([v["ci95"][1] for v in s], dtype=float)
        (line,) = ax.plot(xs, mean, marker="o", lw=1.5, label=n)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(sorted({p["x"] for p in points}))  # the counts evaluated, not fractions of them
    ax.set_xlabel(f"number of {axis}")
    ax.set_ylabel("total cost per episode (mean, 95% CI band)")
    ax.set_title(title or f"total cost vs number of {axis}")
    ax.legend(fontsize=8)
    return _save(plt, fig, Path(path))
