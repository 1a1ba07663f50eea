"""`tapfinger train`'s flags come from `TrainConfig`: one place for each default, every flag with
its help text, flat names for nested options, one-line errors naming the flag and the fix."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from agents.learned.acting import ActingOptions
from agents.learned.config import ModelOptions, PPOConfig, TrainConfig, flag
from tapfinger.cli.main import main
from tapfinger.cli.train import parse

REQUIRED = ["--scenario", "synthetic-3", "--run-dir", "runs/x"]

# The flags README and the tests use; each must keep working.
LEGACY = {
    "--scenario": "synthetic-3", "--run-dir": "runs/x", "--device": "cuda", "--envs": "3", "--total-steps": "7",
    "--seed": "5", "--imitate": "min", "--imitation-episodes": "4", "--imitation-epochs": "2",
    "--dagger-rounds": "1", "--hidden": "32", "--layers": "3", "--heads": "4", "--encoder": "mlp",
    "--lr": "0.001", "--ent-coef": "0.01", "--epochs": "2", "--eval-every": "0", "--eval-seeds": "3",
}
SWITCHES = ["--multi-task", "--no-bayes", "--resume", "--quiet"]


def all_fields(cls) -> list[dataclasses.Field]:
    out = []
    for f in dataclasses.fields(cls):
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        out += all_fields(nested) if dataclasses.is_dataclass(nested) else [f]
    return out


def test_cli_defaults_are_the_dataclass_defaults():
    cmd = parse(REQUIRED)
    assert cmd.training == TrainConfig(scenario="synthetic-3", run_dir="runs/x")
    assert not cmd.resume and not cmd.quiet
    # the warm start's default lives in one place, and it is greedy
    assert TrainConfig("s", "d").imitate == "greedy" == cmd.training.imitate


def test_legacy_flags_set_the_nested_fields():
    cmd = parse([a for k, v in LEGACY.items() for a in (k, v)] + SWITCHES)
    cfg = cmd.training
    assert (cfg.scenario, cfg.run_dir, cfg.device, cfg.envs, cfg.total_steps, cfg.seed) == \
        ("synthetic-3", "runs/x", "cuda", 3, 7, 5)
    assert (cfg.imitate, cfg.imitation_episodes, cfg.imitation_epochs, cfg.dagger_rounds) == ("min", 4, 2, 1)
    assert cfg.model == ModelOptions(hidden=32, layers=3, heads=4, encoder="mlp")
    assert cfg.acting == ActingOptions(multi_task=True, bayes=False)
    assert (cfg.ppo.lr, cfg.ppo.ent_coef, cfg.ppo.epochs) == (0.001, 0.01, 2)
    assert (cfg.eval_every, cfg.eval_seeds) == (0, 3)
    assert cmd.resume and cmd.quiet
    assert parse(REQUIRED + ["--imitate", ""]).training.imitate == ""


def test_help_lists_every_flag_with_its_help_text(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # one panel per row: wider, tyro sets panels side by side
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    # a switch that defaults to on is offered as --no-NAME (--no-bayes), as before tyro
    flags = [flag("no_" + f.name) if f.type in (bool, "bool") and f.default is True else flag(f.name)
             for f in all_fields(TrainConfig)] + ["--resume", "--quiet"]
    assert set(LEGACY) | set(SWITCHES) <= set(flags)
    for name in flags:
        at = next((k for k, ln in enumerate(lines) if re.search(rf"(^|\s){re.escape(name)}(\s|$)", ln)), None)
        assert at is not None, f"{name} missing from --help"
        line = lines[at].split(name, 1)[1]
        if re.fullmatch(r"[\s│]*(\S+)?[\s│]*", line) and at + 1 < len(lines):
            line += lines[at + 1]  # tyro puts the help of a long flag (e.g. --rates [FLOAT ...]) on the next line
        text = re.sub(r"\(default: [^)]*\)|\(required\)|[│╭╮╰╯─]", "", line)
        words = [w for w in text.split() if w not in ("INT", "FLOAT", "STR") and not w.startswith("{")]  # metavars
        assert len(words) >= 2, f"{name} has no help text: {line.strip()!r}"


@pytest.mark.parametrize("args, message", [
    (["--envs", "0"], "--envs must be at least 1"),
    (["--total-steps", "-1"], "--total-steps must be at least 0"),
    (["--lr", "0"], "--lr must be greater than 0"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--heads", "3"], "--heads must be at least 1 and divide --hidden (64)"),
    (["--imitate", "tapfinger"], "--imitate must name a heuristic"),
    (["--eval-heuristic", "nonsense"], "--eval-heuristic must name a heuristic"),
])
def test_bad_values_are_one_line_naming_the_flag_and_the_fix(tmp_path, capsys, args, message):
    assert main(["train", "--scenario", "synthetic-3", "--run-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tapfinger train: error: ") and message in err and "Fix:" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_validate_checks_every_nested_config():
    ok = TrainConfig("s", "d")
    assert ok.validate() is ok
    for bad, name in [(dataclasses.replace(ok, model=ModelOptions(hidden=0)), "--hidden"),
                      (dataclasses.replace(ok, acting=ActingOptions(max_sequence=0)), "--max-sequence"),
                      (dataclasses.replace(ok, ppo=PPOConfig(gamma=0.0)), "--gamma"),
                      (dataclasses.replace(ok, checkpoint_every=0), "--checkpoint-every")]:
        with pytest.raises(ValueError, match=f"^{name} must be"):
            bad.validate()


def test_hparam_table_flattens_the_nesting():
    table = TrainConfig("s", "d", model=ModelOptions(hidden=32)).hparam_table()
    rows = dict(line.strip("|").split("|") for line in table.splitlines()[2:])
    assert rows["model.hidden"] == "32" and rows["ppo.lr"] == "0.0003" and rows["acting.bayes"] == "True"
    assert rows["imitate"] == "greedy" and "model" not in rows and "ppo" not in rows
    assert len(rows) == len(all_fields(TrainConfig))


@pytest.mark.slow
def test_train_command_runs_stores_its_config_and_refuses_other_acting_flags_on_resume(tmp_path, capsys):
    from agents.learned.checkpoint import read_payload

    run = ["train", "--scenario", "synthetic-3", "--run-dir", str(tmp_path), "--envs", "1", "--total-steps", "0",
           "--imitate", "min", "--imitation-episodes", "1", "--imitation-epochs", "1", "--hidden", "16",
           "--layers", "1", "--quiet"]
    assert main(run) == 0
    stored = json.loads(read_payload(tmp_path / "checkpoint.pt")["train_config"])
    assert stored == json.loads(json.dumps(dataclasses.asdict(parse(run[1:]).training)))  # tuples stored as lists
    assert stored["model"]["hidden"] == 16 and stored["acting"]["bayes"] is True
    capsys.readouterr()
    assert main(run + ["--resume", "--no-bayes"]) == 2
    err = capsys.readouterr().err
    assert "was trained with acting options" in err and "--no-bayes" in err and len(err.strip().splitlines()) == 1
