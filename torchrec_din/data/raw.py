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
    with open(path, encoding="utf-8", errors="strict") as f:
        header_line = f.readline()
        header = [h.split(":")[0] for h in header_line.rstrip("\n").split("\t")]
        if header[: len(expected_header)] != expected_header:
            raise DataFormatError(path, 1, f"expected header columns {expected_header}, "
                                           f"got {header}")
        width = len(header)
        for number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            truncated = "" if line.endswith("\n") else " (the file looks truncated)"
            if len(fields) != width:
                skips.handle(DataFormatError(
                    path, number, f"expected {width} tab-separated fields, got "
                                  f"{len(fields)}{truncated}: {line.strip()[:80]!r}"))
                continue
            try:
                yield parse(fields, number)
            except ValueError as e:
                skips.handle(DataFormatError(path, number, f"{e}{truncated}"))


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
