"""Issue 11, item 13: the scenario's `profile = ...` CSV (read by `read_profile`) is read like the
other data files: UTF-8 with a leading byte-order mark ignored, and a non-UTF-8 file, a directory
or a missing path is one error naming the file and a fix."""

from __future__ import annotations

import pytest

from tapfinger.cli.main import main
from tapfinger.sim.progress import ProfileError, read_profile

BOM = "\ufeff"


def test_profile_header_with_a_byte_order_mark_reads(tmp_path):
    # Before: the header was taken as a data row ("cpus and gpus must be integers").
    path = tmp_path / "p.csv"
    path.write_text(f"{BOM}task,cpus,gpus,seconds,peak_mem_mb\nmnist,1,1,10,2048\n", encoding="utf-8")
    table = read_profile(path)
    assert table.tasks() == ["mnist"]
    assert table.lookup("mnist", 1, 1) == 10.0
    assert table.peak_mem_gib[("mnist", 1, 1)] == 2.0


def test_headerless_profile_with_a_byte_order_mark_keeps_the_task_name(tmp_path):
    # Before: the mark glued itself to the first task's name, so the scenario's `profile_task`
    # "mnist" was reported as missing from a file that visibly holds it.
    path = tmp_path / "p.csv"
    path.write_text(f"{BOM}mnist,1,1,10\nmnist,2,1,6\n", encoding="utf-8")
    assert read_profile(path).tasks() == ["mnist"]


def test_non_utf8_profile_names_the_file(tmp_path):
    # Before: a raw UnicodeDecodeError with no file named.
    path = tmp_path / "latin1.csv"
    path.write_bytes("task,cpus,gpus,seconds\ncaf\u00e9,1,1,10\n".encode("latin-1"))
    with pytest.raises(ProfileError, match=r"profile .*latin1\.csv: not UTF-8 text \(byte 26 is 0xe9\).*Fix:"):
        read_profile(path)


def test_profile_path_that_is_a_directory(tmp_path):
    # Before: "profile file not found".
    with pytest.raises(ProfileError, match=r"is a directory, not a file.*Fix:") as info:
        read_profile(tmp_path)
    assert "not found" not in str(info.value)


def test_missing_profile_says_how_to_fix_it(tmp_path):
    # Before: "profile file not found: PATH" and nothing more.
    with pytest.raises(ProfileError, match=r"profile .*nope\.csv: file not found.*Fix:"):
        read_profile(tmp_path / "nope.csv")


def test_command_reports_a_non_utf8_profile_in_one_line(tmp_path, capsys):
    # The error reaches the user as the CLI's one line (exit 2), with the scenario's profile named.
    prof = tmp_path / "prof.csv"
    prof.write_bytes(b"mnist,1,1,10\nmnist,2,1,\xff6\n")
    scen = tmp_path / "s.toml"
    scen.write_text(
        'name = "tiny-profile"\nresources = ["cpu", "gpu"]\ngrid_max = {cpu = 2, gpu = 1}\n'
        'profile = "prof.csv"\n'
        '[arrivals]\nprocess = "poisson"\nrate = 1.0\ntasks = 2\n'
        '[[clusters]]\nname = "a"\nnodes = [{cpu = 2, gpu = 1}]\n'
        '[[task_types]]\nname = "IMG"\nminimum = {cpu = 1, gpu = 1}\n'
        'progress = {model = "profile", profile_task = "mnist"}\n', encoding="utf-8")
    rc = main(["evaluate", "--scenario", str(scen), "--policies", "greedy", "--seeds", "1",
               "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert "prof.csv: not UTF-8 text" in err and "Fix:" in err
