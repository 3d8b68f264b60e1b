"""Reading key files the way merchants actually have them.

UTF-8 (with or without BOM), UTF-16 with a BOM (Windows "Unicode"), and
GB18030 (what Windows tools in China write) when the file is not UTF-8; any
newline convention. Files are streamed line by line, never read whole.
"""
from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import InvalidRequest

_CHUNK = 1 << 20
_BLOCK_CHARACTERS = 1 << 18   # text decoded per block of lines: a few MB of strings at most
# Tabs and spaces can sit inside a key ("card-no password"); other control
# characters mean a wrong encoding or a binary file.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ImportFileError(InvalidRequest):
    """The file cannot be imported; nothing was imported."""


# The messages that name the CLI's --encoding: the panel says them with its form's words instead.
UNDECODABLE = "line %(line)s: the file does not decode as %(encoding)s; nothing imported " \
              "(use --encoding to name the file's encoding)"
UNDECODABLE_AUTO = "line %(line)s: the file does not decode as UTF-8 or GB18030; nothing imported " \
                   "(use --encoding to name the file's encoding)"
CONTROL_CHARACTERS = "line %(line)s: key contains control characters (wrong encoding? a UTF-16 file needs " \
                     "a BOM or --encoding utf-16-le); nothing imported"


def _codec_name(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ImportFileError("unknown encoding %(name)r", name=name) from None


def detect_encoding(fh: BinaryIO) -> str:
    """BOM first; else UTF-8 if the whole file decodes as UTF-8; else GB18030."""
    start = fh.tell()
    head = fh.read(4)
    fh.seek(start)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := fh.read(_CHUNK):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
        return "utf-8"
    except UnicodeDecodeError:
        return "gb18030"
    finally:
        fh.seek(start)


def _line_of_decode_error(fh: BinaryIO, encoding: str) -> int:
    """Exact line of the first undecodable byte (only on the error path)."""
    fh.seek(0)
    decoder = codecs.getincrementaldecoder(encoding)()
    newlines = 0
    while chunk := fh.read(_CHUNK):
        state = decoder.getstate()
        try:
            newlines += _count_newlines(decoder.decode(chunk))
            continue
        except UnicodeDecodeError:
            pass
        # Replay the failing chunk a byte at a time from the last good state.
        decoder.setstate(state)
        for i in range(len(chunk)):
            try:
                newlines += _count_newlines(decoder.decode(chunk[i:i + 1]))
            except UnicodeDecodeError:
                return newlines + 1
    return newlines + 1


def _count_newlines(text: str) -> int:
    # Universal newlines: \r\n and lone \r both end a line. A \r\n split
    # across two decode calls may count twice; only the error message uses it.
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def iter_lines(fh: BinaryIO, encoding: str | None = None) -> tuple[str, Iterator[tuple[int, str]]]:
    """Returns (encoding used, iterator of (line number, text without newline)).

    Decoding errors raise ImportFileError naming the line. ``fh`` must be
    seekable (stdin is spooled to a temporary file first).
    """
    encoding, blocks = iter_line_blocks(fh, encoding)
    return encoding, (numbered for first, block in blocks for numbered in enumerate(block, first))


def iter_line_blocks(fh: BinaryIO, encoding: str | None = None) -> tuple[str, Iterator[tuple[int, list[str]]]]:
    """As iter_lines, in blocks: (encoding, iterator of (number of the block's first
    line, its lines)). A million lines cost a third as much read this way."""
    auto = encoding is None
    if auto:
        encoding = detect_encoding(fh)
    else:
        encoding = _codec_name(encoding)
        if encoding == "utf-8":
            encoding = "utf-8-sig"  # a BOM is never part of the first key
    return encoding, _blocks(fh, encoding, auto)


def _blocks(fh: BinaryIO, encoding: str, auto: bool) -> Iterator[tuple[int, list[str]]]:
    # Universal newlines (\r\n, \r and \n end a line; nothing else does), as
    # iterating the text would give them.
    text = io.TextIOWrapper(fh, encoding=encoding, errors="strict", newline=None)
    lineno, carry, first = 1, "", True
    try:
        while chunk := text.read(_BLOCK_CHARACTERS):
            if first:
                chunk, first = chunk.removeprefix("\ufeff"), False   # a BOM left by a forced encoding
            lines = (carry + chunk).split("\n")
            carry = lines.pop()
            if lines:
                yield lineno, lines
                lineno += len(lines)
        if carry:
            yield lineno, [carry]
    except UnicodeDecodeError:
        text.detach()
        bad = _line_of_decode_error(fh, encoding)
        if auto:
            raise ImportFileError(UNDECODABLE_AUTO, line=bad) from None
        raise ImportFileError(UNDECODABLE, line=bad, encoding=encoding) from None
    text.detach()


def key_has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_key(lineno: int, key: str, max_length: int) -> None:
    if len(key) > max_length:
        raise ImportFileError("line %(line)s: key is %(length)s characters, longer than the limit of "
                              "%(limit)s; nothing imported", line=lineno, length=len(key), limit=max_length)
    if _CONTROL.search(key):
        raise ImportFileError(CONTROL_CHARACTERS, line=lineno)
