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
# Tabs and spaces can sit inside a key ("card-no password"); other control
# characters mean a wrong encoding or a binary file.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ImportFileError(InvalidRequest):
    """The file cannot be imported; nothing was imported."""


def _codec_name(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {name!r}") from None


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
    auto = encoding is None
    if auto:
        encoding = detect_encoding(fh)
    else:
        encoding = _codec_name(encoding)
        if encoding == "utf-8":
            encoding = "utf-8-sig"  # a BOM is never part of the first key
    return encoding, _lines(fh, encoding, auto)


def _lines(fh: BinaryIO, encoding: str, auto: bool) -> Iterator[tuple[int, str]]:
    text = io.TextIOWrapper(fh, encoding=encoding, errors="strict", newline=None)
    try:
        for lineno, line in enumerate(text, 1):
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a BOM left by a forced encoding
            yield lineno, line.rstrip("\n")
    except UnicodeDecodeError:
        text.detach()
        bad = _line_of_decode_error(fh, encoding)
        tried = "UTF-8 or GB18030" if auto else encoding
        raise ImportFileError(f"line {bad}: the file does not decode as {tried}; nothing imported "
                              "(use --encoding to name the file's encoding)") from None
    text.detach()


def check_key(lineno: int, key: str, max_length: int) -> None:
    if len(key) > max_length:
        raise ImportFileError(f"line {lineno}: key is {len(key)} characters, longer than the "
                              f"limit of {max_length}; nothing imported")
    if _CONTROL.search(key):
        raise ImportFileError(f"line {lineno}: key contains control characters (wrong encoding? "
                              "a UTF-16 file needs a BOM or --encoding utf-16-le); nothing imported")
