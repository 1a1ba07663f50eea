"""Measure how fast real training tasks run under each (CPUs, GPUs) allocation.

`tapfinger profile` runs a few real PyTorch training steps of small models that live here
(an image CNN, a Transformer language model, a speech model; synthetic inputs, nothing is
downloaded) and writes a profile CSV that `tapfinger.sim.progress.read_profile` reads:

    task,cpus,gpus,seconds,peak_mem_mb,<extra columns>

`seconds` is the wall time of a fixed amount of work (`samples` training samples, after a
few untimed warm-up steps), which is the "completion time" T of the testbed schema; a
scenario turns it into progress per slot as `slot / (T + startup_seconds)`.

Every measurement runs in a fresh Python subprocess (`python -m tapfinger.testbed.profiler
--worker SPEC`): thread-pool sizes, CPU affinity and allocator state are process-wide in
PyTorch and must not leak from one measurement into the next. The worker pins itself to the
first `cpus` CPUs this process may use (`os.sched_setaffinity`) *before* importing torch, so
OpenMP sizes its pool to match, and reports one JSON line.

Rows are appended and flushed one at a time, so an interrupted run resumes: rows already in
the CSV are skipped. A sidecar `<out>.json` describes the machine and the parameters; a
resumed run must use the same parameters (otherwise its rows would not be comparable).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

# Columns of the CSV. The first four are the testbed schema (tapfinger-testbed/README.md);
# `peak_mem_mb` is read by `read_profile`; the rest are for people and later analyses.
CSV_COLUMNS = ("task", "cpus", "gpus", "seconds", "peak_mem_mb", "gpu_mem_mb", "step_seconds",
               "steps", "samples", "batch_size", "setup_seconds", "contention", "model")
FAMILIES = ("cnn", "lm", "audio")
SIZES = ("tiny", "small", "base")
RESULT_PREFIX = "TAPFINGER-PROFILE-RESULT "


class ProfilerError(RuntimeError):
    """A profiling run cannot proceed: the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------
# model configurations (plain data: the parent process never imports torch for these)


@dataclass(frozen=True)
class ModelConfig:
    """One trainable model: its family, size preset, default batch size and shape parameters."""

    name: str
    family: str
    size: str
    batch_size: int
    params: dict[str, int] = field(default_factory=dict)


# Shapes per family and size. `small` is the default (the bare family name); `tiny` exists
# for tests (a step takes milliseconds); `base` is for machines with more cores.
_PRESETS: dict[str, dict[str, tuple[int, dict[str, int]]]] = {
    "cnn": {  # ConvNet on 32x32 RGB images, 10 classes (CIFAR-like)
        "tiny": (8, {"width": 4, "image": 16, "classes": 10}),
        "small": (32, {"width": 16, "image": 32, "classes": 10}),
        "base": (64, {"width": 48, "image": 32, "classes": 10}),
    },
    "lm": {  # causal Transformer language model on token sequences
        "tiny": (4, {"vocab": 128, "d_model": 16, "layers": 1, "heads": 2, "seq": 16}),
        "small": (16, {"vocab": 4096, "d_model": 128, "layers": 2, "heads": 4, "seq": 64}),
        "base": (16, {"vocab": 16384, "d_model": 256, "layers": 6, "heads": 8, "seq": 128}),
    },
    "audio": {  # wav2vec2-like: strided conv feature encoder + Transformer + CTC over characters
        "tiny": (4, {"samples": 1600, "channels": 8, "d_model": 16, "layers": 1, "heads": 2,
                     "vocab": 30, "target": 4}),
        "small": (8, {"samples": 8000, "channels": 64, "d_model": 96, "layers": 2, "heads": 4,
                      "vocab": 30, "target": 12}),
        "base": (8, {"samples": 16000, "channels": 256, "d_model": 256, "layers": 4, "heads": 4,
                     "vocab": 30, "target": 24}),
    },
}


def model_names() -> list[str]:
    """Names `--models` accepts: `cnn`, `lm`, `audio` (size small) and `<family>-<size>`."""
    return list(FAMILIES) + [f"{f}-{s}" for f in FAMILIES for s in SIZES]


def model_config(name: str) -> ModelConfig:
    family, _, size = name.partition("-")
    size = size or "small"
    if family not in _PRESETS or size not in _PRESETS[family]:
        raise ProfilerError(f"unknown model {name!r}. Fix: use one of {', '.join(model_names())}")
    batch, params = _PRESETS[family][size]
    return ModelConfig(name=name, family=family, size=size, batch_size=batch, params=dict(params))


# ---------------------------------------------------------------------------------------------
# the models (torch is imported only inside these functions: the worker imports it after
# pinning itself, and `tapfinger --help` stays fast)


def build_model(cfg: ModelConfig) -> tuple[Any, Callable[[int, Any], Any], Callable[[Any, Any], Any]]:
    """(module, make_batch(batch_size, generator) -> batch, loss(module, batch) -> scalar)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    p = cfg.params
    if cfg.family == "cnn":
        w = p["width"]

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

        model = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, p["classes"]))

        def make_batch(bs: int, gen: Any) -> Any:
            return (torch.randn(bs, 3, p["image"], p["image"], generator=gen),
                    torch.randint(0, p["classes"], (bs,), generator=gen))

        def loss(m: Any, batch: Any) -> Any:
            x, y = batch
            return F.cross_entropy(m(x), y)

        return model, make_batch, loss

    if cfg.family == "lm":
        model = _TransformerLM(p["vocab"], p["d_model"], p["layers"], p["heads"], p["seq"])

        def make_batch(bs: int, gen: Any) -> Any:
            tokens = torch.randint(0, p["vocab"], (bs, p["seq"] + 1), generator=gen)
            return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

        def loss(m: Any, batch: Any) -> Any:
            x, y = batch
            logits = m(x)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        return model, make_batch, loss

    if cfg.family == "audio":
        model = _SpeechModel(p["channels"], p["d_model"], p["layers"], p["heads"], p["vocab"])

        def make_batch(bs: int, gen: Any) -> Any:
            wave = torch.randn(bs, p["samples"], generator=gen)
            # label 0 is the CTC blank; targets are random "characters" 1..vocab-1
            targets = torch.randint(1, p["vocab"], (bs, p["target"]), generator=gen)
            return wave, targets

        def loss(m: Any, batch: Any) -> Any:
            wave, targets = batch
            logp = m(wave).log_softmax(-1).transpose(0, 1)  # [frames, batch, vocab] for ctc_loss
            frames = torch.full((wave.shape[0],), logp.shape[0], dtype=torch.long)
            lengths = torch.full((wave.shape[0],), targets.shape[1], dtype=torch.long)
            return F.ctc_loss(logp, targets, frames, lengths, zero_infinity=True)

        return model, make_batch, loss

    raise ProfilerError(f"unknown model family {cfg.family!r}; known: {', '.join(FAMILIES)}")


def _TransformerLM(vocab: int, d_model: int, layers: int, heads: int, seq: int) -> Any:
    import torch
    from torch import nn

    class TransformerLM(nn.Module):
        """Token + position embeddings, a causal pre-norm Transformer encoder, a tied output layer."""

        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.zeros(seq, d_model))
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

        def forward(self, x: Any) -> Any:
            h = self.tok(x) + self.pos[: x.shape[1]]
            h = self.encoder(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
            return self.norm(h) @ self.tok.weight.t()  # weight tying, as GPT-2 does

    return TransformerLM()


def _SpeechModel(channels: int, d_model: int, layers: int, heads: int, vocab: int) -> Any:
    from torch import nn

    class SpeechModel(nn.Module):
        """Raw waveform -> strided 1-D convolutions (total stride 320, ~20 ms frames at 16 kHz,
        as in wav2vec2's feature encoder) -> Transformer encoder -> per-frame character logits."""

        def __init__(self) -> None:
            super().__init__()
            convs: list[nn.Module] = []
            cin = 1
            for k, s in [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]:
                convs += [nn.Conv1d(cin, channels, k, stride=s, bias=False), nn.GroupNorm(1, channels), nn.GELU()]
                cin = channels
            self.features = nn.Sequential(*convs)
            self.project = nn.Linear(channels, d_model)
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, vocab)

        def forward(self, wave: Any) -> Any:
            h = self.features(wave.unsqueeze(1)).transpose(1, 2)  # [batch, frames, channels]
            return self.head(self.encoder(self.project(h)))

    return SpeechModel()


# ---------------------------------------------------------------------------------------------
# one measurement (runs inside the worker subprocess)


@dataclass(frozen=True)
class Job:
    """One measurement: a model at a batch size on `cpus` CPUs and `gpus` GPUs."""

    task: str
    model: str
    batch_size: int
    cpus: int
    gpus: int
    samples: int
    warmup: int
    seed: int
    cpu_ids: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.task, self.cpus, self.gpus)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    `/proc/self/status` VmHWM is the high-water mark of the current address space only.
    `getrusage().ru_maxrss` is used where /proc is missing; on Linux it can carry over the
    *parent's* peak when the child was started with vfork (which subprocess does), so it
    is only the fallback.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS


def cpu_times(cpu_ids: Iterable[int]) -> tuple[float, float] | None:
    """(busy, total) seconds the given CPUs have spent since boot, from /proc/stat; None elsewhere."""
    wanted = {f"cpu{i}" for i in cpu_ids}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = total = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                parts = line.split()
                if parts and parts[0] in wanted:
                    values = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                    total += sum(values)
                    busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError):
        return None
    return busy / tick, total / tick


def contention(before: tuple[float, float] | None, after: tuple[float, float] | None, own_cpu: float,
               n_cpus: int, wall: float) -> float | None:
    """Share of the pinned CPUs' time that *other* processes used during a measurement (0 = clean).

    The measured process is pinned to those CPUs, so all their busy time beyond its own CPU
    time belongs to someone else. Clock ticks are 10 ms: short runs read a little noisy.
    """
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - own_cpu
    return float(min(1.0, max(0.0, others / (n_cpus * wall))))


def idle_share(cpu_ids: Iterable[int], seconds: float = 0.5) -> float:
    """Fraction of the given CPUs' time that was idle over a short sample (1.0 if unknown)."""
    ids = list(cpu_ids)
    a = cpu_times(ids)
    time.sleep(seconds)
    b = cpu_times(ids)
    if a is None or b is None or b[1] <= a[1]:
        return 1.0
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


def run_job(job: Job, spawn_time: float | None = None) -> dict[str, Any]:
    """Train `job.model` for `job.samples` samples after `job.warmup` untimed steps; time it.

    Call this in a fresh process that has already pinned itself (see `_worker_main`):
    torch's thread settings are process-wide.
    """
    import torch

    torch.set_num_threads(job.cpus)
    torch.manual_seed(job.seed)
    cfg = model_config(job.model)
    model, make_batch, loss_fn = build_model(cfg)
    device = torch.device("cuda:0" if job.gpus > 0 else "cpu")
    model = model.to(device)
    if job.gpus > 1:
        # Data parallel over the first `gpus` devices: the global batch is split among them,
        # so the amount of work per step is the same whatever the GPU count.
        model = torch.nn.DataParallel(model, device_ids=list(range(job.gpus)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(job.seed)
    # A few pre-made batches, cycled: the measurement is of training, not of the random
    # number generator (a real task's data loader runs ahead in other workers).
    pool = [make_batch(job.batch_size, gen) for _ in range(4)]

    def step(i: int) -> float:
        batch = tuple(t.to(device, non_blocking=True) for t in pool[i % len(pool)])
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model, batch)
        value.backward()
        opt.step()
        return float(value.detach())  # .item() also waits for the GPU to finish the step

    def sync() -> None:
        if job.gpus > 0:
            torch.cuda.synchronize()

    for i in range(job.warmup):
        step(i)
    sync()
    setup = time.time() - spawn_time if spawn_time is not None else float("nan")
    steps = max(1, math.ceil(job.samples / job.batch_size))
    times = []
    losses = []
    cpus_used = job.cpu_ids or tuple(usable_cpus())
    stat_before, own_before = cpu_times(cpus_used), time.process_time()
    t_start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t0)
    sync()
    total = time.perf_counter() - t_start
    shared = contention(stat_before, cpu_times(cpus_used), time.process_time() - own_before,
                        len(cpus_used), total)
    gpu_mem = (max(torch.cuda.max_memory_allocated(d) for d in range(job.gpus)) / 2**20
               if job.gpus > 0 else None)
    if not all(math.isfinite(x) for x in losses):
        raise ProfilerError(f"{job.model}: the loss became non-finite; the measurement is not valid")
    times.sort()
    return {
        "seconds": total,
        "step_seconds": times[len(times) // 2],  # median: robust to a stray slow step
        "steps": steps,
        "samples": steps * job.batch_size,
        "peak_mem_mb": _peak_rss_mb(),
        "gpu_mem_mb": gpu_mem,
        "setup_seconds": setup,
        "contention": shared,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
    }


def _die_with_parent(parent: int | None) -> None:
    """Ask Linux to end this worker when the profiler dies (kill, not only Ctrl-C)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def _worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    spawn_time = spec.pop("spawn_time", None)
    _die_with_parent(spec.pop("parent", None))
    job = Job(**{**spec, "cpu_ids": tuple(spec.get("cpu_ids", ()))})
    if job.cpu_ids and hasattr(os, "sched_setaffinity"):
        # Before importing torch, so that OpenMP and the intra-op pool see only these CPUs.
        os.sched_setaffinity(0, set(job.cpu_ids))
    result = run_job(job, spawn_time)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def thread_env(cpus: int) -> dict[str, str]:
    """Environment of a worker limited to `cpus` threads (read by OpenMP/MKL at torch import)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    return env


def measure(job: Job, timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess and return its result dict."""
    spec = {**asdict(job), "cpu_ids": list(job.cpu_ids), "spawn_time": time.time(), "parent": os.getpid()}
    cmd = [sys.executable, "-m", "tapfinger.testbed.profiler", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(job.cpus), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProfilerError(f"measuring {job.task} on {job.cpus} CPUs / {job.gpus} GPUs took longer than "
                            f"{timeout:g} s. Fix: lower --samples, or use a smaller model size") from None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise ProfilerError(f"measuring {job.task} on {job.cpus} CPUs / {job.gpus} GPUs failed (exit code "
                        f"{proc.returncode}):\n{tail}")


# ---------------------------------------------------------------------------------------------
# the machine and the sidecar


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (respects taskset / cgroup cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def cuda_devices() -> list[str]:
    """Names of the CUDA devices torch can use ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def describe_machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(usable_cpus()),
        "mem_total_mb": _mem_total_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_devices": cuda_devices(),
    }


# ---------------------------------------------------------------------------------------------
# the run: plan, resume, measure, append


@dataclass(frozen=True)
class ProfileRequest:
    """What `tapfinger profile` was asked to measure."""

    models: tuple[str, ...]
    cpus: tuple[int, ...]
    gpus: tuple[int, ...] = (0,)
    batch_sizes: tuple[int, ...] = ()  # empty = each model's default batch size
    samples: int = 512
    warmup: int = 2
    repeats: int = 1
    seed: int = 0
    wait_idle: float = 60.0  # seconds to wait, before each measurement, for its CPUs to be idle
    max_contention: float = 0.1  # re-measure when other processes took more of the CPUs than this
    retries: int = 2  # re-measurements allowed per row (the least disturbed one is kept)

    def command(self, out: str | Path) -> list[str]:
        """The `tapfinger profile` command line that reproduces this request."""
        cmd = ["tapfinger", "profile", "--models", ",".join(self.models),
               "--cpus", ",".join(map(str, self.cpus)), "--gpus", ",".join(map(str, self.gpus))]
        if self.batch_sizes:
            cmd += ["--batch-sizes", ",".join(map(str, self.batch_sizes))]
        return cmd + ["--samples", str(self.samples), "--warmup", str(self.warmup), "--repeats",
                      str(self.repeats), "--seed", str(self.seed), "--wait-idle", f"{self.wait_idle:g}",
                      "--max-contention", f"{self.max_contention:g}", "--retries", str(self.retries),
                      "--out", str(out)]

    def parameters(self) -> dict[str, Any]:
        """What makes rows comparable; a resumed run must match these."""
        return {"samples": self.samples, "warmup": self.warmup, "seed": self.seed,
                "models": {m: asdict(model_config(m)) for m in self.models}}


def plan_jobs(req: ProfileRequest) -> list[Job]:
    """Every (model, batch size, cpus, gpus, repeat) to measure, in a stable order."""
    for m in req.models:
        model_config(m)  # unknown names fail before anything runs
    avail = usable_cpus()
    for c in req.cpus:
        if c < 1:
            raise ProfilerError(f"--cpus {c}: a measurement needs at least 1 CPU. Fix: use counts >= 1")
        if c > len(avail):
            raise ProfilerError(f"--cpus {c}: this process may use only {len(avail)} CPUs ({avail}). "
                                f"Fix: measure at most {len(avail)} CPUs here, or run on a larger machine")
    if any(g < 0 for g in req.gpus):
        raise ProfilerError("--gpus: counts must be >= 0 (0 = CPU only)")
    if any(b < 1 for b in req.batch_sizes):
        raise ProfilerError("--batch-sizes: batch sizes must be >= 1")
    if req.samples < 1 or req.warmup < 0 or req.repeats < 1:
        raise ProfilerError("need --samples >= 1, --warmup >= 0 and --repeats >= 1")
    if req.wait_idle < 0 or req.retries < 0 or not 0 <= req.max_contention <= 1:
        raise ProfilerError("need --wait-idle >= 0, --retries >= 0 and --max-contention in [0, 1]")
    jobs = []
    for m in req.models:
        cfg = model_config(m)
        # With --batch-sizes every row names its batch size, so one file can hold several.
        sizes = [(b, f"{m}-b{b}") for b in req.batch_sizes] if req.batch_sizes else [(cfg.batch_size, m)]
        for batch, task in sizes:
            for g in req.gpus:
                for c in req.cpus:
                    for _ in range(req.repeats):
                        jobs.append(Job(task=task, model=m, batch_size=batch, cpus=c, gpus=g,
                                        samples=req.samples, warmup=req.warmup, seed=req.seed,
                                        cpu_ids=tuple(avail[:c])))
    return jobs


def existing_rows(out: Path) -> dict[tuple[str, int, int], int]:
    """How many rows each (task, cpus, gpus) already has in `out` (resume)."""
    if not out.exists() or out.stat().st_size == 0:
        return {}
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(h.strip() for h in rows[0]) != CSV_COLUMNS:
        raise ProfilerError(f"{out} exists but is not a `tapfinger profile` output (its header is not "
                            f"{','.join(CSV_COLUMNS)}). Fix: choose another --out, or delete the file")
    counts: dict[tuple[str, int, int], int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(CSV_COLUMNS):
            # Only the last line can be cut short by an interruption; anything else is damage.
            raise ProfilerError(f"{out}, line {lineno}: {len(row)} columns instead of {len(CSV_COLUMNS)} "
                                f"(an interrupted write?). Fix: delete that line and run again to re-measure it")
        key = (row[0], int(row[1]), int(row[2]))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def sidecar_path(out: str | Path) -> Path:
    """The machine/parameters description next to a profile: F.csv -> F.json."""
    return Path(out).with_suffix(".json")


def _read_sidecar(out: Path) -> dict[str, Any]:
    side = sidecar_path(out)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ProfilerError(f"{side} is not valid JSON ({exc}). Fix: delete it (it is rewritten) or "
                            f"choose another --out") from None


def _write_sidecar(out: Path, req: ProfileRequest, machine: dict[str, Any], notes: list[str],
                   argv: list[str] | None) -> None:
    """Describe the machine and the parameters; a resumed or extended run adds to it."""
    previous = _read_sidecar(out)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    params = req.parameters()
    # The file may have been extended by several runs (more models, more CPU counts): keep
    # every model's configuration and every command line that wrote into it.
    params["models"] = {**previous.get("parameters", {}).get("models", {}), **params["models"]}
    commands = list(previous.get("commands", []))
    if argv is not None and argv not in commands:
        commands.append(argv)
    doc = {
        "profile": out.name,
        "created": previous.get("created", now),
        "updated": now,
        "machine": machine,
        "parameters": params,
        "commands": commands,
        "notes": sorted(set(previous.get("notes", [])) | set(notes)),
        "columns": {
            "seconds": "wall time of `samples` training samples after `warmup` untimed steps",
            "peak_mem_mb": "peak resident host memory of the measuring process (VmHWM), MiB",
            "gpu_mem_mb": "peak torch.cuda.max_memory_allocated over the devices used, MiB",
            "step_seconds": "median time of one optimisation step",
            "steps": "timed steps (ceil(samples / batch_size))",
            "setup_seconds": "process start to first timed step (python + torch import, model build, warm-up)",
            "contention": "share of the pinned CPUs' time used by other processes during the timed "
                          "steps (0 = undisturbed; rows above --max-contention were re-measured)",
        },
    }
    sidecar_path(out).write_text(json.dumps(doc, indent=2) + "\n")


def _check_resume(out: Path, req: ProfileRequest, machine: dict[str, Any]) -> None:
    """Rows of one file must be comparable: same work, warm-up, seed, model shapes, machine."""
    prev = _read_sidecar(out)
    if not prev:
        return
    old = prev.get("parameters", {})
    new = json.loads(json.dumps(req.parameters()))  # tuples -> lists, as stored
    for key in ("samples", "warmup", "seed"):
        if key in old and old[key] != new[key]:
            raise ProfilerError(f"{out} was measured with --{key} {old[key]}, this run asks for "
                                f"{new[key]}; rows would not be comparable. Fix: resume with --{key} "
                                f"{old[key]}, or write to another --out")
    for name, cfg in new["models"].items():
        if name in old.get("models", {}) and old["models"][name] != cfg:
            raise ProfilerError(f"{out}: model {name!r} was measured with another configuration "
                                f"({old['models'][name]}); rows would not be comparable. Fix: write to "
                                f"another --out")
    old_cpu = prev.get("machine", {}).get("cpu_model")
    if old_cpu and old_cpu != machine["cpu_model"]:
        raise ProfilerError(f"{out} was measured on a {old_cpu!r}, this machine is a "
                            f"{machine['cpu_model']!r}. Fix: write to another --out")


def run_profile(req: ProfileRequest, out: str | Path, progress: bool = True,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                argv: list[str] | None = None, measure_fn: Callable[[Job], dict[str, Any]] = measure,
                ) -> list[dict[str, Any]]:
    """Measure every planned job not yet in `out`, appending one CSV row per measurement.

    GPU counts > 0 are skipped with a message when CUDA (or that many devices) is absent.
    Returns the rows written by this call.
    """
    out = Path(out)
    jobs = plan_jobs(req)
    machine = describe_machine()
    notes: list[str] = []
    n_dev = len(machine["cuda_devices"])
    for g in sorted({j.gpus for j in jobs if j.gpus > 0}):
        if n_dev < g:
            why = ("CUDA is not available (torch " + machine["torch"] + ")") if n_dev == 0 else \
                f"only {n_dev} CUDA device(s) are visible"
            msg = f"skipping --gpus {g}: {why}; the profile has no rows with {g} GPUs"
            log(msg)
            notes.append(msg)
            jobs = [j for j in jobs if j.gpus != g]
    _check_resume(out, req, machine)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load1 > 0.5:
        # Measurements pinned to CPUs that other processes also run on come out slower (with
        # several threads, far slower: every parallel region waits for its slowest thread).
        log(f"note: the machine is busy (1-minute load average {load1:.2f} on {len(usable_cpus())} usable "
            f"CPUs): each measurement waits up to {req.wait_idle:g} s for idle CPUs and is repeated "
            f"up to {req.retries} time(s) when disturbed; see the contention column")
    done = existing_rows(out)
    todo: list[Job] = []
    seen: dict[tuple[str, int, int], int] = dict(done)
    for j in jobs:
        # Repeats of a key are identical jobs; skip as many as the file already has.
        if seen.get(j.key, 0) > 0:
            seen[j.key] -= 1
        else:
            todo.append(j)
    skipped = len(jobs) - len(todo)
    if skipped:
        log(f"resuming {out}: {skipped} measurement(s) already there, {len(todo)} to go")
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_sidecar(out, req, machine, notes, argv)
    new_file = not out.exists() or out.stat().st_size == 0
    written: list[dict[str, Any]] = []
    bar = _progress_bar(len(jobs), skipped, progress)
    try:
        with out.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new_file:
                writer.writerow(CSV_COLUMNS)
                fh.flush()
            for job in todo:
                bar.set_description(f"{job.task} cpus={job.cpus} gpus={job.gpus}")
                res = _measure_undisturbed(job, req, measure_fn, log)
                row = {"task": job.task, "cpus": job.cpus, "gpus": job.gpus, "seconds": res["seconds"],
                       "peak_mem_mb": res["peak_mem_mb"], "gpu_mem_mb": res.get("gpu_mem_mb"),
                       "step_seconds": res["step_seconds"], "steps": res["steps"], "samples": res["samples"],
                       "batch_size": job.batch_size, "setup_seconds": res.get("setup_seconds"),
                       "contention": res.get("contention"), "model": job.model}
                writer.writerow([_format(row[c]) for c in CSV_COLUMNS])
                fh.flush()  # a row on disk is a row that an interrupted run will not redo
                os.fsync(fh.fileno())
                written.append(row)
                bar.update(1)
    finally:
        bar.close()
    return written


def _measure_undisturbed(job: Job, req: ProfileRequest, measure_fn: Callable[[Job], dict[str, Any]],
                         log: Callable[[str], None]) -> dict[str, Any]:
    """Measure `job`, waiting for idle CPUs first and re-measuring while others disturb it."""
    best: dict[str, Any] | None = None
    for attempt in range(req.retries + 1):
        deadline = time.monotonic() + req.wait_idle
        while req.wait_idle > 0 and idle_share(job.cpu_ids) < 0.9 and time.monotonic() < deadline:
            time.sleep(1.0)
        res = measure_fn(job)
        shared = res.get("contention")
        if best is None or (shared is not None and shared < (best.get("contention") or 0.0)):
            best = res
        if shared is None or shared <= req.max_contention:
            break
        if attempt < req.retries:
            log(f"{job.task} on {job.cpus} CPU(s): other processes used {shared:.0%} of its CPUs; measuring again")
    return best


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), with an error naming the flag."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ProfilerError(f"{what}: expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values:
        raise ProfilerError(f"{what}: give at least one value")
    return values


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise ProfilerError(f"--models: give at least one of {', '.join(model_names())}")
    for n in names:
        model_config(n)
    return names


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: tapfinger profile ... (this module's own entry point is the measurement worker)",
          file=sys.stderr)
    sys.exit(2)
