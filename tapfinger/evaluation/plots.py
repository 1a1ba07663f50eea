"""PNG plots of an evaluation: bars with CIs, the JCT CDF, tasks in the system over time, (for a
scenario with deadlines) the deadline satisfaction ratio, and (for one with faults) tasks in the
system of one seed with its failure events marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLOT_FILES = ("avg_jct.png", "jct_cdf.png", "in_system.png")  # what write_plots always writes, in order
DEADLINE_PLOT = "deadline_ratio.png"  # written after them when the results have deadline metrics
FAULT_PLOT = "faults.png"  # written last when the results have fault metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = results["policies"]
    episodes = results["_episodes"]
    names = sorted((n for n in res if n != "bound"), key=lambda n: res[n]["avg_jct"]["mean"])
    paths = []

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    means = [res[n]["avg_jct"]["mean"] for n in names]
    err = np.array([[m - res[n]["avg_jct"]["ci95"][0], res[n]["avg_jct"]["ci95"][1] - m]
                    for n, m in zip(names, means)]).T
    ax.bar(names, means, yerr=err, capsize=4, color="tab:blue")
    ax.axhline(res["bound"]["avg_jct"]["mean"], color="k", ls="--", lw=1, label="lower bound")
    ax.set_ylabel("average JCT (slots), 95% CI")
    ax.set_title(f"{results['scenario']}: {len(results['seeds'])} seeds")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    paths.append(_save(plt, fig, out_dir / PLOT_FILES[0]))

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        jct = np.concatenate([e.jct[e.jct >= 0] for e in episodes[n].values()])
        xs = np.sort(jct)
        ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=n)
    ax.set_xscale("log")
    ax.set_xlabel("JCT (slots, log scale)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"{results['scenario']}: JCT CDF, all seeds pooled")
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, out_dir / PLOT_FILES[1]))

    fig, ax = plt.subplots(figsize=(7, 4))
    for n in names:
        series = [e.in_system for e in episodes[n].values()]
        length = max(len(s) for s in series)
        padded = np.zeros((len(series), length))
        for i, s in enumerate(series):
            padded[i, : len(s)] = s  # zero tasks after an episode has ended
        ax.plot(padded.mean(axis=0), label=n, lw=1)
    ax.set_xlabel("slot")
    ax.set_ylabel("tasks in the system (mean over seeds)")
    ax.set_title(f"{results['scenario']}: tasks in the system over time")
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, out_dir / PLOT_FILES[2]))
    if any("deadline_ratio" in res[n] for n in names):
        paths.append(_deadline_plot(plt, results, out_dir / DEADLINE_PLOT))
    if any("lost_work" in res[n] for n in names):
        paths.append(_fault_plot(plt, results, names, out_dir / FAULT_PLOT))
    return paths


def _deadline_plot(plt, results: dict, path: Path) -> Path:
    """Deadline satisfaction ratio per policy, best (highest) first, with 95% CIs. A policy whose
    episodes had no deadline task has no ratio and no bar."""
    res = results["policies"]
    ratio = {n: res[n]["deadline_ratio"] for n in res if n != "bound" and np.isfinite(res[n]["deadline_ratio"]["mean"])}
    names = sorted(ratio, key=lambda n: -ratio[n]["mean"])
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    if names:
        means = [ratio[n]["mean"] for n in names]
        err = np.array([[m - ratio[n]["ci95"][0], ratio[n]["ci95"][1] - m] for n, m in zip(names, means)]).T
        ax.bar(names, means, yerr=err, capsize=4, color="tab:green")
    else:
        ax.text(0.5, 0.5, "no task had a deadline", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("deadline satisfaction ratio, 95% CI\n(higher is better)")
    ax.set_title(f"{results['scenario']}: {len(results['seeds'])} seeds; declined and late tasks missed")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(plt, fig, path)


def _fault_plot(plt, results: dict, names: list[str], path: Path) -> Path:
    """Tasks in the system in the first seed's episode of every policy, with a vertical line at
    each slot end where a node failed or left. One seed, not the mean over seeds that
    in_system.png draws: the events differ from seed to seed, and within a seed they are the same
    for every policy (common random numbers), so one set of lines fits every curve. The set is
    that of the seed's longest episode (a shorter one stops meeting events when it ends)."""
    seed = results["seeds"][0]
    runs = {n: results["_episodes"][n][seed] for n in names if seed in results["_episodes"][n]}
    fig, ax = plt.subplots(figsize=(8, 4))
    for n, e in runs.items():
        ax.plot(np.arange(len(e.in_system)), e.in_system, label=n, lw=1)
    longest = max(runs.values(), key=lambda e: len(e.in_system), default=None)
    events = sorted(set(longest.fault_slots)) if longest is not None else []
    for i, slot in enumerate(events):
        ax.axvline(slot, color="tab:red", lw=0.8, ls=":", label="a node failed or left" if i == 0 else None)
    ax.set_xlabel("slot (a line: a node failed or left at that slot's end)")
    ax.set_ylabel("tasks in the system")
    count = len(longest.fault_slots) if longest is not None else 0
    ax.set_title(f"{results['scenario']}: seed {seed}, {count} failures/departures")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
