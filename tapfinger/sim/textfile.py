"""The one rule for reading a text data file (scenario TOML, trace and profile CSVs, Philly
summaries, `tapfinger profile` outputs): UTF-8, with a leading byte-order mark dropped, because
spreadsheets and some Windows editors write one and it would otherwise glue itself to the first
cell (or make TOML report "Invalid statement at line 1"). A missing path, a directory, an
unreadable file and bytes that are not UTF-8 are each one error naming the file and a fix, raised
in the caller's error type with the caller's prefix, so each reader keeps its own messages."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
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


def csv_rows(text: str, header: list[str], where: str, error: type[Exception]) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of each data row of a small CSV whose first row must be
    `header`; blank lines and `#` comments are skipped. A wrong header is an error naming `where`,
    the line and the header to write (the capacity schedules' and the fault events' files)."""
    seen = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        cells = [c.strip() for c in next(csv.reader([raw]))]
        if not seen:
            if cells != header:
                raise error(f"{where}, line {lineno}: header {cells} is not {header}. Fix: start the file with "
                            f"the line `{','.join(header)}`")
            seen = True
            continue
        yield lineno, cells
    if not seen:
        raise error(f"{where}: no header. Fix: start the file with the line `{','.join(header)}`")
