"""Progress models: how much of a task one slot completes under an allocation.

Every model is reduced to two tables indexed by the (cpu, gpu) allocation,

    Δp = W[c, g] · sqrt(1.2 − p) + B[c, g]

which covers both the paper's synthetic formula (W = tanh(g / s), B = base) and measured
profiles (W = 0, B = slot / (T(c, g) + start-up)). Tables keep the simulator's hot path a
pair of numpy gathers; the minimum-requirement check is applied by the engine.

The one-slot step (`progress_step`), the finish test (`finished`) and the slot count under a
fixed allocation (`slots_to_finish`) live here and nowhere else: the engine, the lower bound,
the exact optimum and the heuristics' predictions all count with them, so they agree to the bit.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapfinger.sim.textfile import read_text

# Shape constant of the paper's synthetic model: Δp = w · sqrt(1.2 − p) + base.
SQRT_OFFSET = 1.2
# Progress is accumulated in floating point; a task whose exact progress is 1 must finish.
FINISH_EPS = 1e-9
# Slot count that stands for "never finishes" (an allocation below the minimum, or no speed).
# Large enough that no real count reaches it, small enough that a few of them add up in int64.
NEVER = int(np.iinfo(np.int64).max // 4)
# A task that needs more slots than this alone is counted as never finishing (bounds the loops).
SLOT_LIMIT = 1_000_000


# What the progress functions take: one value or a numpy array of them (broadcast together).
Values = np.ndarray | float


class ProfileError(ValueError):
    """A profile table is missing, malformed or lacks a measurement a scenario needs."""


@dataclass(frozen=True)
class ProfileTable:
    """Mean measured completion time (seconds) per (task, cpus, gpus), and peak memory if known."""

    path: str
    seconds: dict[tuple[str, int, int], float]
    peak_mem_gib: dict[tuple[str, int, int], float]

    def tasks(self) -> list[str]:
        return sorted({k[0] for k in self.seconds})

    def lookup(self, task: str, cpus: int, gpus: int) -> float:
        try:
            return self.seconds[(task, cpus, gpus)]
        except KeyError:
            raise ProfileError(
                f"profile {self.path}: no measurement for task '{task}' with {cpus} CPUs and "
                f"{gpus} GPUs. Fix: measure it (`tapfinger profile`), or lower the scenario's "
                f"grid_max so that it does not ask for this allocation."
            ) from None


_HEADER_FIELDS = ("task", "cpus", "gpus", "seconds")


def read_profile(path: str | Path) -> ProfileTable:
    """Read a profile CSV in the testbed schema (task, cpus, gpus, seconds, ...).

    The shared testbed file has no header and trailing loss-curve cells; files written by
    `tapfinger profile` have a header and a `peak_mem_mb` column. Runs of the same
    (task, cpus, gpus) are averaged. The file is UTF-8; a leading byte-order mark is ignored.
    """
    path = Path(path)
    rows = list(csv.reader(io.StringIO(_read_text(path), newline="")))
    sums: dict[tuple[str, int, int], list[float]] = {}
    mems: dict[tuple[str, int, int], list[float]] = {}
    if not rows:
        raise ProfileError(f"profile {path} is empty. Fix: point the scenario at a CSV with rows "
                           f"'task,cpus,gpus,seconds'.")
    mem_col = None
    start = 0
    if rows[0] and rows[0][0].strip().lower() == "task":
        header = [h.strip().lower() for h in rows[0]]
        if tuple(header[:4]) != _HEADER_FIELDS:
            raise ProfileError(f"profile {path}: header must start with {','.join(_HEADER_FIELDS)}, "
                               f"got {','.join(header[:4])}")
        mem_col = header.index("peak_mem_mb") if "peak_mem_mb" in header else None
        start = 1
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 4:
            raise ProfileError(f"profile {path}, line {lineno}: expected at least 4 columns "
                               f"(task, cpus, gpus, seconds), got {len(row)}")
        task = row[0].strip()
        try:
            cpus, gpus = int(row[1]), int(row[2])
            seconds = float(row[3])
        except ValueError:
            raise ProfileError(f"profile {path}, line {lineno}: cpus and gpus must be integers and "
                               f"seconds a number, got {row[1:4]}") from None
        if cpus < 0 or gpus < 0 or not math.isfinite(seconds) or seconds <= 0:
            raise ProfileError(f"profile {path}, line {lineno}: need cpus >= 0, gpus >= 0 and "
                               f"seconds > 0, got cpus={cpus} gpus={gpus} seconds={seconds}")
        key = (task, cpus, gpus)
        sums.setdefault(key, []).append(seconds)
        if mem_col is not None and mem_col < len(row) and row[mem_col].strip():
            try:
                mems.setdefault(key, []).append(float(row[mem_col]) / 1024.0)
            except ValueError:
                raise ProfileError(f"profile {path}, line {lineno}: peak_mem_mb must be a number, "
                                   f"got {row[mem_col]!r}") from None
    if not sums:
        raise ProfileError(f"profile {path} has no data rows")
    return ProfileTable(
        path=str(path),
        seconds={k: float(np.mean(v)) for k, v in sums.items()},
        peak_mem_gib={k: float(np.max(v)) for k, v in mems.items()},
    )


def _read_text(path: Path) -> str:
    """The profile's text: UTF-8, a leading byte-order mark dropped (a spreadsheet's mark would
    otherwise glue itself to the first cell, hiding the header or renaming the first task)."""
    return read_text(path, "profile", ProfileError,
                     fix_missing="check the scenario's `profile` path (it is relative to the scenario file; "
                                 "`package:` and `shared:` prefixes name packaged and shared data)",
                     fix_encoding="save the CSV as UTF-8")


def synthetic_tables(gpu_scale: float, base: float, cpu_max: int, gpu_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's synthetic model: W = tanh(g / gpu_scale) (0 when gpu_scale is 0), B = base."""
    g = np.arange(gpu_max + 1, dtype=np.float64)
    w_row = np.tanh(g / gpu_scale) if gpu_scale > 0 else np.zeros_like(g)
    weight = np.broadcast_to(w_row, (cpu_max + 1, gpu_max + 1)).copy()
    return weight, np.full((cpu_max + 1, gpu_max + 1), float(base))


def throughput_tables(gpus: tuple[int, ...], iterations_per_second: tuple[float, ...], iterations: float,
                      cpu_max: int, gpu_max: int, slot_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Throughput-vs-GPUs model (ElasticFlow's measured tables): B[c, g] = slot · ips(g) / iterations,
    W = 0. ips is linear between the listed GPU counts, flat beyond the last (scaling that has
    stopped stays stopped: no extrapolated gain), and proportional below the first (ips(0) = 0).
    CPUs do not change the speed; the task type's CPU minimum still applies (the engine's check)."""
    xs = np.concatenate([[0.0], np.asarray(gpus, dtype=np.float64)])
    ys = np.concatenate([[0.0], np.asarray(iterations_per_second, dtype=np.float64)])
    ips = np.interp(np.arange(gpu_max + 1, dtype=np.float64), xs, ys)  # flat beyond the last point
    row = slot_seconds * ips / float(iterations)
    return np.zeros((cpu_max + 1, gpu_max + 1)), np.broadcast_to(row, (cpu_max + 1, gpu_max + 1)).copy()


def profile_tables(table: ProfileTable, task: str, minimum_cpu: int, minimum_gpu: int,
                   cpu_max: int, gpu_max: int, slot_seconds: float,
                   startup_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Measured model: B[c, g] = slot / (T(c, g) + start-up) for every allocation at or above the minimum.

    A task measured on CPUs only (every row of it has gpus = 0, as `tapfinger profile` writes
    on a machine without CUDA) is taken to gain nothing from GPUs: T(c, g) = T(c, 0) for every
    g. Otherwise every (c, g) cell the scenario can allocate must have been measured.
    """
    if task not in table.tasks():
        raise ProfileError(f"profile {table.path} has no task '{task}' (it has: "
                           f"{', '.join(table.tasks())}). Fix: use one of those names as the task "
                           f"type's `profile_task`.")
    cpu_only = not any(k[0] == task and k[2] > 0 for k in table.seconds)
    weight = np.zeros((cpu_max + 1, gpu_max + 1))
    rate = np.zeros((cpu_max + 1, gpu_max + 1))
    for c in range(minimum_cpu, cpu_max + 1):
        for g in range(minimum_gpu, gpu_max + 1):
            rate[c, g] = slot_seconds / (table.lookup(task, c, 0 if cpu_only else g) + startup_seconds)
    return weight, rate


def progress_step(weight: Values, base: Values, progress: Values, work: Values = 1.0) -> Values:
    """Δp of one slot: (W · sqrt(max(1.2 − p, 0)) + B) / work, for numpy arrays or scalars.

    Both forms do the same IEEE operations in the same order (sqrt is correctly rounded in
    `math` and numpy alike), so a prediction made with scalars equals the engine's array
    update to the bit.
    """
    if any(isinstance(x, np.ndarray) for x in (weight, base, progress, work)):
        return (weight * np.sqrt(np.maximum(SQRT_OFFSET - progress, 0.0)) + base) / work
    return _scalar_step(weight, base, progress, work)


def _scalar_step(weight: float, base: float, progress: float, work: float) -> float:
    # `progress_step` of plain floats: `math`, since numpy's per-call overhead would dominate the
    # heuristics' per-task loops (`slots_to_finish` calls it once per slot it counts).
    return (weight * math.sqrt(max(SQRT_OFFSET - progress, 0.0)) + base) / work


def finished(progress: Values) -> Values:
    """Whether a task at `progress` (array or scalar) has finished: p >= 1 − FINISH_EPS."""
    return progress >= 1.0 - FINISH_EPS


def slots_to_finish(weight: Values, base: Values, work: Values = 1.0, progress: Values = 0.0) -> int | np.ndarray:
    """Slots a task at `progress` needs to finish when it keeps the allocation whose tables give
    (weight, base), counted with the engine's update (`progress_step`, `finished`): 0 if it has
    finished already, NEVER if it makes no progress or needs more than SLOT_LIMIT slots.

    Scalars give an int; arrays (broadcast together) give an int64 array of the counts.
    """
    if any(isinstance(x, np.ndarray) for x in (weight, base, work, progress)):
        return _slots_to_finish_array(weight, base, work, progress)
    if weight <= 0 and base <= 0:
        return NEVER
    # Plain floats compute the same IEEE doubles as numpy's float64 scalars, only faster.
    w, b, d, p = float(weight), float(base), float(work), float(progress)
    n = 0
    while not finished(p):
        if n >= SLOT_LIMIT:
            return NEVER
        p = p + _scalar_step(w, b, p, d)
        n += 1
    return n


def _slots_to_finish_array(weight: Values, base: Values, work: Values, progress: Values) -> np.ndarray:
    weight, base, work, progress = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64)
                                                         for x in (weight, base, work, progress)))
    slots = np.full(weight.shape, NEVER, dtype=np.int64)
    moving = (weight > 0) | (base > 0)  # the others would loop forever
    slots[moving & finished(progress)] = 0
    idx = np.flatnonzero(moving & ~finished(progress))
    w, b, d, p = (x.reshape(-1)[idx] for x in (weight, base, work, progress))
    n = 0
    while idx.size and n < SLOT_LIMIT:
        n += 1
        p = p + progress_step(w, b, p, d)
        done = finished(p)
        if done.any():
            slots.flat[idx[done]] = n
            keep = ~done
            idx, w, b, d, p = idx[keep], w[keep], b[keep], d[keep], p[keep]
    return slots
