"""A byte-level pre-scan of JSON / JSON Lines files, run before ``datasets`` reads them.

Why it exists: pyarrow's JSON reader (and the pandas/ujson fallback ``datasets`` uses) recurses
once per nesting level, so one line nested ~10,000 deep overflows the C stack and kills the
process with a segfault that no ``except`` can catch. The scan also catches what ``datasets``
reports badly or not at all: bad UTF-8 (pyarrow keeps it in string columns, to fail later with
no file or line) and a file with no data (a bare ``StopIteration`` or "corresponds to no data").

It is vectorized with numpy over blocks of whole lines, so it adds a small fraction to the
time ``datasets`` takes to read a large valid file. Nesting is counted exactly for valid JSON:
brackets inside strings are ignored, escaped quotes are recognized, and a raw newline ends
any string (JSON strings cannot hold one), so one broken line cannot hide the lines after it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np

# Arrow holds at most 64 nested levels ("Recursion level in ArrowSchema struct exceeded" past
# 63 in a row); real data nests a few (row > messages > content parts > ...).
MAX_ROW_DEPTH = 63
BLOCK_BYTES = 8 << 20
_WHITESPACE = b" \t\r\n"
# Only these bytes matter for nesting; a block shrinks to them in one C pass (bytes.translate)
# before numpy looks at it, so typical text costs little more than the read.
_STRUCTURE = b'"[]{}\n'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)


class JsonScanError(ValueError):
    """A problem found by ``scan_json_file``: ``line`` is 1-based (``None``: the whole file)."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line
        self.reason = reason


def _structure(block: bytes) -> bytes:
    """``block`` reduced to its quotes, brackets and newlines, with escaped quotes left out."""
    if b"\\" not in block:
        return block.translate(None, _NOT_STRUCTURE)
    data = np.frombuffer(block, dtype=np.uint8)
    backslashes = np.flatnonzero(data == ord("\\"))
    breaks = np.flatnonzero(np.diff(backslashes) != 1)
    run_start = backslashes[np.concatenate([[0], breaks + 1])]
    run_end = backslashes[np.concatenate([breaks, [len(backslashes) - 1]])]
    # A quote right after an odd run of backslashes is escaped (JSON pairs them left to right).
    after = run_end + 1
    odd = ((run_end - run_start) % 2 == 0) & (after < len(data))
    after = after[odd]
    escaped = after[data[after] == ord('"')]
    if len(escaped) == 0:
        return block.translate(None, _NOT_STRUCTURE)
    blanked = bytearray(block)
    np.frombuffer(blanked, dtype=np.uint8)[escaped] = ord(" ")
    return blanked.translate(None, _NOT_STRUCTURE)


def _walk(structure: bytes, depth: int, limit: int) -> tuple[int, int | None]:
    """Nesting over a block's ``structure`` from ``depth``: (depth at its end, number of
    newlines before the first point deeper than ``limit``, or ``None`` if there is none)."""
    if not structure:
        return depth, None
    chars = np.frombuffer(structure, dtype=np.uint8)
    quotes_seen = np.cumsum(chars == ord('"'))
    # A raw newline ends any string (JSON strings cannot hold one): count quotes per line.
    line_base = np.maximum.accumulate(np.where(chars == ord("\n"), quotes_seen, 0))
    outside = (quotes_seen - line_base) % 2 == 0
    opens = (chars == ord("[")) | (chars == ord("{"))
    closes = (chars == ord("]")) | (chars == ord("}"))
    walk = depth + np.cumsum(np.where(outside, opens.astype(np.int64) - closes, 0))
    # Floor the walk at 0: stray closing brackets on one (invalid) line must not lower the
    # count for the lines after it, or a deep line there would go unseen.
    levels = walk - np.minimum.accumulate(np.minimum(walk, 0))
    too_deep = levels > limit
    if not too_deep.any():
        return int(levels[-1]), None
    return int(levels[-1]), structure.count(b"\n", 0, int(np.argmax(too_deep)))


def scan_json_file(path: Path, max_depth: int = MAX_ROW_DEPTH) -> None:
    """Check that ``path`` is UTF-8, holds some data and that no row nests deeper than
    ``max_depth`` levels of objects and lists (the row's own object counts; the top-level list
    of a file holding one list of rows does not).

    Raises:
        JsonScanError: naming the line of the first bad byte or of the too-deep value, or
            saying that the file holds nothing but whitespace.
    """
    lines_before, depth, has_data, limit = 0, 0, False, max_depth
    with open(path, "rb") as handle:
        first = True
        while True:
            block = handle.read(BLOCK_BYTES)
            if not block:
                break
            block += handle.readline()  # whole lines: no UTF-8 character or string is cut
            if first:
                block = block.removeprefix(codecs.BOM_UTF8)  # datasets strips it too
                limit += block.lstrip(_WHITESPACE).startswith(b"[")  # rows sit inside a list
                first = False
            try:
                if not block.isascii():  # (the ASCII test is much cheaper than a decode)
                    block.decode("utf-8")
            except UnicodeDecodeError as err:
                line = lines_before + block.count(b"\n", 0, err.start) + 1
                column = err.start - (block.rfind(b"\n", 0, err.start) + 1) + 1
                raise JsonScanError(
                    line, f"not valid UTF-8 (byte 0x{block[err.start]:02x} at column {column})"
                ) from None
            has_data = has_data or bool(block.strip(_WHITESPACE))
            structure = _structure(block)
            depth, newlines = _walk(structure, depth, limit)
            if newlines is not None:
                raise JsonScanError(
                    lines_before + newlines + 1,
                    f"a row nested deeper than {max_depth} levels of objects/lists (Arrow's limit; refused "
                    "before parsing, since far deeper values crash the JSON reader)",
                )
            lines_before += structure.count(b"\n")
    if not has_data:
        raise JsonScanError(None, "the file is empty (or holds only blank lines): no rows to load")
