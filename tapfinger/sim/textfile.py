"""The one rule for reading a text data file (scenario TOML, trace and profile CSVs, Philly
summaries, `tapfinger profile` outputs): UTF-8, with a leading byte-order mark dropped, because
spreadsheets and some Windows editors write one and it would otherwise glue itself to the first
cell (or make TOML report "Invalid statement at line 1"). A missing path, a directory, an
unreadable file and bytes that are not UTF-8 are each one error naming the file and a fix, raised
in the caller's error type with the caller's prefix, so each reader keeps its own messages."""

from __future__ import annotations

import codecs
from pathlib import Path

_BOM = codecs.BOM_UTF8


def read_text(path: Path, what: str, error: type[Exception], fix_missing: str = "check the path",
              fix_directory: str = "", fix_encoding: str = "save the file as UTF-8") -> str:
    """The text of `path`. Errors read "{what} {path}: {problem}. Fix: {fix}" (just "{path}: ..."
    when `what` is empty); `fix_directory` defaults to `fix_missing`."""
    where = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise error(f"{where}: is a directory, not a file. Fix: {fix_directory or fix_missing}")
    if not path.is_file():
        raise error(f"{where}: file not found. Fix: {fix_missing}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{where}: cannot be read ({exc.strerror}). Fix: check the file's permissions") from None
    # Strip the mark ourselves rather than decode "utf-8-sig": that codec counts the bad byte's
    # position from after the mark, so the message would name the wrong byte of the file.
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text (byte {skip + exc.start} is 0x{exc.object[exc.start]:02x}). "
                    f"Fix: {fix_encoding}") from None
