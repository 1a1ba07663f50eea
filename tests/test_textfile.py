"""Issue 11: one home for "read a text file as UTF-8, ignore a leading byte-order mark, name the
file and the first bad byte; a directory or a missing file is its own error"
(`tapfinger/sim/textfile.py`), used by every data-file reader: scenarios, traces, profiles, Philly
summaries and `tapfinger profile` outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapfinger.sim.progress import ProfileError, read_profile
from tapfinger.sim.scenario import ScenarioError, load_scenario
from tapfinger.sim.textfile import read_text
from tapfinger.sim.traces import TraceError, read_trace
from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.philly import read_philly
from tapfinger.testbed.profile_files import existing_rows

ROOT = Path(__file__).resolve().parent.parent
BOM = b"\xef\xbb\xbf"


class Oops(ValueError):
    pass


def test_reads_utf8_and_drops_one_leading_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(BOM + "caf\u00e9\n".encode())
    assert read_text(path, "thing", Oops) == "caf\u00e9\n"
    path.write_bytes(b"plain\n")
    assert read_text(path, "thing", Oops) == "plain\n"


def test_errors_use_the_callers_type_prefix_and_fixes(tmp_path):
    with pytest.raises(Oops, match=r"^thing .*nope\.csv: file not found\. Fix: look again$"):
        read_text(tmp_path / "nope.csv", "thing", Oops, fix_missing="look again")
    with pytest.raises(Oops, match=r"^thing .*: is a directory, not a file\. Fix: pick a file in it$"):
        read_text(tmp_path, "thing", Oops, fix_missing="look again", fix_directory="pick a file in it")
    with pytest.raises(Oops, match=r": is a directory, not a file\. Fix: look again$"):
        read_text(tmp_path, "thing", Oops, fix_missing="look again")  # the directory fix defaults to it
    (tmp_path / "b.csv").write_bytes(b"ab\xffc")
    with pytest.raises(Oops, match=r"^.*b\.csv: not UTF-8 text \(byte 2 is 0xff\)\. Fix: save the file as UTF-8$"):
        read_text(tmp_path / "b.csv", "", Oops)  # no prefix: the message starts with the path
    with pytest.raises(Oops, match=r"\(byte 2 is 0xff\)\. Fix: re-export it$"):
        read_text(tmp_path / "b.csv", "thing", Oops, fix_encoding="re-export it")


def test_the_bad_byte_is_counted_from_the_start_of_the_file(tmp_path):
    # Python's utf-8-sig decoder counts from after the mark, so a file with a mark named the
    # wrong byte (2 here, where the 0xff stands at byte 5 of the file).
    path = tmp_path / "b.csv"
    path.write_bytes(BOM + b"ab\xffc")
    with pytest.raises(Oops, match=r"\(byte 5 is 0xff\)"):
        read_text(path, "thing", Oops)


def _profile_output(path: Path) -> None:
    existing_rows(path)


# Every reader of a data file, with its error type and the prefix of its messages.
READERS = [
    ("scenario", load_scenario, ScenarioError, "scenario "),
    ("trace", read_trace, TraceError, "trace "),
    ("profile", read_profile, ProfileError, "profile "),
    ("philly", read_philly, TraceError, "Philly trace "),
    ("profile output", _profile_output, ProfilerError, ""),
]


@pytest.mark.parametrize("name,reader,error,prefix", READERS, ids=[r[0] for r in READERS])
def test_every_reader_names_the_same_bad_byte_the_same_way(tmp_path, name, reader, error, prefix):
    # Before: "is not a UTF-8 text file (...)" for traces, "invalid start byte at byte 2 of a
    # block" for Philly summaries and profile outputs, and byte 2 (not 5) everywhere.
    path = tmp_path / "bad.csv"
    path.write_bytes(BOM + b"ab\xffc\n")
    with pytest.raises(error) as info:
        reader(path)
    assert str(info.value).startswith(f"{prefix}{path}: not UTF-8 text (byte 5 is 0xff). Fix: "), str(info.value)


def test_the_bad_byte_message_is_written_once():
    # One home: no other module builds the message itself.
    homes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tapfinger").rglob("*.py")
                   if "not UTF-8 text" in p.read_text(encoding="utf-8"))
    assert homes == ["tapfinger/sim/textfile.py"]
