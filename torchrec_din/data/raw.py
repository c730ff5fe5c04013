"""Reading raw data files with errors that name the file and line."""

import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple


class DataFormatError(ValueError):
    """A raw data file is malformed; the message names the file and the line."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line


class SkipCounter:
    """Counts malformed lines skipped per file (only when the user asked to skip them)."""

    def __init__(self, skip_malformed: bool) -> None:
        self.skip_malformed = skip_malformed
        self.skipped: Dict[str, int] = {}
        self.first: Dict[str, str] = {}

    def handle(self, error: DataFormatError) -> None:
        if not self.skip_malformed:
            raise error
        name = os.path.basename(error.path)
        self.skipped[name] = self.skipped.get(name, 0) + 1
        self.first.setdefault(name, str(error))


def read_tsv(
    path: str,
    expected_header: List[str],
    skips: SkipCounter,
    parse: Callable[[List[str], int], Tuple],
) -> Iterator[Tuple]:
    """Yield ``parse(fields, line_number)`` for each data line of a tab-separated file.

    The header must start with ``expected_header`` (names before any ``:type``). A line with
    the wrong number of fields, or one ``parse`` rejects with ValueError, raises a
    DataFormatError naming file and line, or is skipped and counted if ``skips`` allows.
    A file whose last line lacks its newline is reported as truncated when that line is
    malformed.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    number = 1
    data_lines = 0
    # Binary lines, decoded one by one, so that bad bytes are reported with their line.
    with open(path, "rb") as f:
        header = [h.split(":")[0] for h in _decode(f.readline(), path, 1).rstrip("\n").split("\t")]
        if header[: len(expected_header)] != expected_header:
            raise DataFormatError(path, 1, f"expected header columns {expected_header}, "
                                           f"got {header}")
        width = len(header)
        for number, raw in enumerate(f, start=2):
            line = _decode(raw, path, number)
            if not line.strip():
                continue
            data_lines += 1
            fields = line.rstrip("\n").split("\t")
            if not line.endswith("\n"):
                # A cut-off last line can still parse (a timestamp 874965758 cut to 87), so
                # a last line without its newline is never trusted.
                skips.handle(DataFormatError(
                    path, number, "the last line has no newline, so the file looks "
                                  f"truncated: {line.strip()[:80]!r}; if the line is "
                                  "complete, add the newline"))
                continue
            if len(fields) != width:
                skips.handle(DataFormatError(
                    path, number, f"expected {width} tab-separated fields, got "
                                  f"{len(fields)}: {line.strip()[:80]!r}"))
                continue
            try:
                yield parse(fields, number)
            except ValueError as e:
                skips.handle(DataFormatError(path, number, str(e)))
    if data_lines == 0:
        raise DataFormatError(path, number, "no data lines after the header")


def _decode(raw: bytes, path: str, number: int) -> str:
    try:
        return raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, number, f"not UTF-8 text ({e.reason} at byte {e.start} of "
                                            "the line); is this the right file?") from None


class Vocabulary:
    """Maps raw tokens to dense ids 1..n in first-seen order; 0 is reserved for unknown."""

    def __init__(self) -> None:
        self.ids: Dict[str, int] = {}

    def add(self, token: str) -> int:
        if token not in self.ids:
            self.ids[token] = len(self.ids) + 1
        return self.ids[token]

    def get(self, token: str, default: Optional[int] = 0) -> int:
        return self.ids.get(token, default)

    def __len__(self) -> int:
        """Rows a table needs: the tokens plus the unknown id 0."""
        return len(self.ids) + 1
