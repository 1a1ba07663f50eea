"""Acting with an exported TapFinger policy (`tapfinger export`), outside the training code.

An exported file holds the network as a program with a plain-tensor interface
(`agents.export_format` and docs/export.md): the padded graph arrays of one round and the masks
of the agents that decide go in, greedy actions and the task logits come out. This module runs
it with onnxruntime (`onnx:FILE`, imports numpy and onnxruntime only: neither torch nor
torch_geometric) or with `torch.export.load` (`pt2:FILE`, imports torch but not
torch_geometric; only once `agents.pt2_archive` has checked that the archive holds nothing that
could run code when torch loads it), as the scorer of the learned policy's one round loop
(`agents.learned.acting.RoundPlanner`: liveness rule, multi-task sequences, conflict resolution),
the same loop the eager policy runs.
"""

from __future__ import annotations

import io
import json
import operator
import os
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np

from agents.base import Policy
from agents.export_format import (ACTING_KEYS, FORMAT, INPUT_NAMES, METADATA_KEY, OUTPUT_NAMES, PT2_EXTRA_FILE,
                                  ExportedPolicyError, check_metadata, decision_feeds, declines, expected_layout,
                                  graph_feeds, hint_policy, input_names, output_names, round_feeds,
                                  sees_node_faults, stacked_decision_feeds, takes_hints)
from agents.learned.acting import ActingOptions, Choices, RoundPlanner, Step
from agents.learned.masks import MASK_KEYS
from agents.pt2_archive import UnsafeProgramError, check_pt2_archive, count_nonfinite_weights, read_pt2_metadata
from envs.actions import RoundActions
from envs.graph import feature_layout
from tapfinger.sim.scenario import Scenario, scenario_fingerprint

# Re-exported: the interface is defined in agents.export_format; callers of this runtime (tests,
# scripts) find it here too.
__all__ = ["ACTING_KEYS", "FORMAT", "INPUT_NAMES", "MASK_KEYS", "METADATA_KEY", "OUTPUT_NAMES", "PT2_EXTRA_FILE",
           "ExportedPolicy", "ExportedPolicyError", "OnnxRunner", "ProgramScorer", "Pt2Runner", "Runner",
           "check_metadata", "decision_feeds", "expected_layout", "feature_layout", "graph_feeds", "open_runner",
           "read_metadata", "scenario_fingerprint"]


# --------------------------------------------------------------------------- runtimes
class Runner(Protocol):
    metadata: dict

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in OUTPUT_NAMES order (then DECLINE_OUTPUTS, for a declining program)."""


def _missing(path: Path, kind: str) -> ExportedPolicyError:
    if path.is_dir():
        return ExportedPolicyError(f"exported policy {path} is a directory, not a file. Fix: give the {kind} file "
                                   f"itself (the --out of `tapfinger export`), e.g. {path / ('policy.' + kind)}.")
    return ExportedPolicyError(f"exported policy {path} does not exist. Fix: write it with `tapfinger export "
                               f"--checkpoint CKPT --format {kind} --out {path}`, or give the right path.")


def _unreadable(path: Path, kind: str, exc: BaseException) -> ExportedPolicyError:
    reason = " ".join(str(exc).split())[:200]
    return ExportedPolicyError(
        f"exported policy {path} cannot be read as a {kind} program ({type(exc).__name__}: {reason}); it is "
        f"corrupted, truncated or not a {kind} file. Fix: export it again with `tapfinger export --format {kind}`.")


def _nonfinite(path: Path, bad: int, total: int, where: str) -> ExportedPolicyError:
    return ExportedPolicyError(
        f"exported policy {path} {where} ({bad:,} of {total:,} values are NaN or infinite): it was exported from "
        f"a diverged training run. Fix: export the run's best.pt or an earlier checkpoint, or retrain with a "
        f"lower --lr.")


class OnnxRunner:
    """onnxruntime session, one intra-op thread by default (evaluation workers are the parallelism).
    ONNX is a protobuf of operators and tensors: opening it runs no code from the file."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        if not path.is_file():
            raise _missing(path, "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # shape-inference warnings on dynamic dims are noise here
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise _unreadable(path, "onnx", exc) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = _parse_json(raw)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = list(output_names(declines(self.metadata)))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Feed what the session declares: an exporter may drop inputs the graph never reads.
        return self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})


def _pt2_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise _missing(path, "pt2")
    if not zipfile.is_zipfile(path):  # torch.export.save writes a zip archive
        raise _unreadable(path, "pt2", ValueError("not a zip archive"))
    return path.read_bytes()


class Pt2Runner:
    """A `torch.export` program (.pt2) run eagerly by torch; torch_geometric is not needed.

    The file is read once; its metadata is read (and, given a scenario, checked) and the archive
    checked by `agents.pt2_archive` before torch sees it: torch.export.load can run code from a
    crafted file, so only an archive of the form `tapfinger export` writes reaches it, repacked
    from the checked members."""

    def __init__(self, path: Path, threads: int | None = None, scenario: Scenario | None = None):
        data = _pt2_bytes(path)
        self.metadata = read_pt2_metadata(data, path)
        if scenario is not None:
            check_metadata(self.metadata, path, scenario, "pt2")
        archive = check_pt2_archive(data, path)
        bad, total = count_nonfinite_weights(archive.members)
        if bad:
            raise _nonfinite(path, bad, total, "has non-finite weights")
        import torch

        program = _load_program(torch, archive.data, path)
        if threads is not None:
            torch.set_num_threads(threads)
        self.module = program.module()
        self.torch = torch
        self.input_names = input_names(takes_hints(self.metadata))  # positional: with greedy hints or not

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(feeds[k]) for k in self.input_names))
        return [o.numpy() for o in out]


def _load_program(torch, data: bytes, path: Path):
    """torch.export.load of a checked archive, with torch's own guard on as well: every torch.load
    inside it is forced to weights_only (TORCH_FORCE_WEIGHTS_ONLY_LOAD)."""
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        # from a buffer: torch.export.load wants file names ending in .pt2, ours need not
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # version skew, inconsistent members
        raise _unreadable(path, "pt2", exc) from None
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved
    # The archive check allowed aten operators and getitem by name; here, what the names resolved to.
    for node in program.graph.nodes:
        if node.op == "call_function" and not (
                node.target is operator.getitem
                or (isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten")):
            raise UnsafeProgramError(f"exported policy {path} is refused: its program calls {node.target!r}, which "
                                     f"is not an aten operator. Fix: export it again with `tapfinger export`.")
    return program


def _parse_json(raw: str | bytes | None) -> dict | None:
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def open_runner(path: str | Path, kind: str, scenario: Scenario, threads: int | None = None) -> Runner:
    """Open an exported program and check that it fits `scenario`. `threads`: onnxruntime's intra-op
    threads (default 1: evaluation workers are the parallelism); for pt2, torch.set_num_threads if
    given (torch's setting is process-wide, so it is left alone by default)."""
    path = Path(path)
    if kind == "onnx":
        runner: Runner = OnnxRunner(path, threads=threads or 1)
        check_metadata(runner.metadata, path, scenario, kind)
    elif kind == "pt2":
        runner = Pt2Runner(path, threads=threads, scenario=scenario)  # checks the metadata before loading
    else:
        raise ExportedPolicyError(f"unknown exported format {kind!r}. Fix: use onnx:FILE or pt2:FILE.")
    return runner


# --------------------------------------------------------------------------- the policy
class _ProgramRound:
    def __init__(self, runner: Runner, arrays: dict[str, np.ndarray], path: Path | None = None):
        self.runner = runner
        self.graph = round_feeds(arrays)
        self.path = path

    def score(self, agents: np.ndarray, masks: dict[str, np.ndarray]) -> Choices:
        # Every call runs the whole program, encoder included: the encoder's output does not depend
        # on the masks, so a later choice of a sequence equals the eager model's reuse of it.
        place, node, alloc, logits, prob, *rest = self.runner.run({**self.graph,
                                                                   **stacked_decision_feeds(agents, masks)})
        # Finite inputs and weights give finite scores (masked choices are -1e9, not -inf); NaN
        # weights, which an ONNX file does not show without loading them, give NaN scores and a
        # meaningless argmax: stop rather than act on them.
        bad = int((~np.isfinite(logits)).sum())
        if bad:
            raise _nonfinite(self.path or Path("<program>"), bad, int(logits.size),
                             "computed non-finite task scores from finite inputs; its weights are not finite")
        return Choices(place, node, alloc, prob, decline=rest[0] if rest else None)  # rest: DECLINE_OUTPUTS


class ProgramScorer:
    """The exported program as the round loop's scorer (greedy choices, the shared tie rule)."""

    def __init__(self, runner: Runner, path: Path | None = None):
        self.runner = runner
        self.path = path

    def for_round(self, arrays: dict[str, np.ndarray]) -> _ProgramRound:
        return _ProgramRound(self.runner, arrays, self.path)


class ExportedPolicy(Policy):
    """Greedy TapFinger policy from an exported file: `onnx:FILE` or `pt2:FILE` in the registry.

    Acting options (multi-task, Bayes) come from the file's metadata; `bayes` and `max_sequence`
    may be overridden. The pointer ablation is part of the exported program and cannot."""

    name = "exported"
    learned = True

    def __init__(self, scenario: Scenario, seed: int = 0, path: str | Path | None = None, kind: str = "onnx",
                 threads: int | None = None, **overrides):
        super().__init__(scenario, seed)
        if path is None:
            raise ExportedPolicyError("an exported policy needs a file: use onnx:FILE or pt2:FILE")
        self.name = f"{kind}:{path}"
        self.runner = open_runner(path, kind, scenario, threads=threads)
        acting = {k: v for k, v in self.runner.metadata.get("acting", {}).items() if k in ACTING_KEYS}
        for k, v in overrides.items():
            if k not in ("multi_task", "max_sequence", "bayes"):
                raise ExportedPolicyError(f"exported policy option {k!r} is not supported. Fix: use multi_task, "
                                          f"max_sequence or bayes (pointer is fixed at export).")
            acting[k] = v
        # a program that takes greedy's proposals gets them from the planner's GreedyPolicy, the
        # eager policy's own code (numpy), which sees every round of the episode
        # a declining program is offered the decline choices (check_metadata refused it on a
        # scenario that does not allow declining); a program with node_faults is fed the
        # node-health columns (any scenario: without faults they are 1s)
        self.planner = RoundPlanner(scenario, ActingOptions(**acting), record_arrays=False,
                                    greedy_hint=takes_hints(self.runner.metadata),
                                    decline=declines(self.runner.metadata),
                                    hint_policy=hint_policy(self.runner.metadata),
                                    node_faults=sees_node_faults(self.runner.metadata))
        self.scorer = ProgramScorer(self.runner, Path(path))

    @property
    def metadata(self) -> dict:
        return self.runner.metadata

    @property
    def queue(self) -> list[list[Step]]:
        """The plans of the current slot (multi-task sequences still to be played), per agent."""
        return self.planner.queue

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.planner.reset()

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        actions, _ = self.planner.plan_round(obs, self.scorer)
        return actions


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported file without a scenario check (for `tapfinger export --show`).
    A .pt2 program is never loaded for this (nor torch imported): its metadata is read from the
    archive, and the archive is checked as loading it would be, so that what --show accepts, a
    policy of that file accepts too."""
    path = Path(path)
    if (path.is_file() and zipfile.is_zipfile(path)) or path.suffix == ".pt2":
        data = _pt2_bytes(path)  # a clear error for a missing, directory or non-zip .pt2
        meta = read_pt2_metadata(data, path)
        if meta is not None:
            check_pt2_archive(data, path)
    else:
        meta = OnnxRunner(path).metadata
    if meta is None:
        raise ExportedPolicyError(f"{path} holds no TapFinger metadata. Fix: export it with `tapfinger export`.")
    return meta
