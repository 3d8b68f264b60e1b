"""Passphrase encryption for backup archives and key backups, streamed.

Layout: a header (magic, kind, scrypt parameters, salt), then chunks of at
most 64 KiB of plaintext, each sealed with AES-256-GCM under a key scrypt
derives from the passphrase. A chunk's nonce is its counter plus a flag for
the last chunk, and every chunk authenticates the header, so chunks cannot be
reordered, dropped or cut off at the end, nor the header changed, without
the reader noticing (the STREAM construction of Hoang, Reyhanitabar, Rogaway
and Vizár). A wrong passphrase fails on the first chunk.
"""
from __future__ import annotations

import io
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KamengdError

MAGIC = b"KAMENGD-SEALED\x00"
KINDS = {b"A": "backup archive", b"K": "key backup"}
CHUNK = 64 * 1024
_HEADER = struct.Struct(">15s c B B B 16s")   # magic, kind, log2(n), r, p, salt
_LENGTH = struct.Struct(">I")
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 15, 8, 1    # about 32 MiB and 0.2 s per derivation


class SealedError(KamengdError):
    pass


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _derive(passphrase: str, salt: bytes, log_n: int, r: int, p: int) -> AESGCM:
    if not passphrase:
        raise SealedError("the passphrase is empty")
    key = Scrypt(salt=salt, length=32, n=2 ** log_n, r=r, p=p).derive(passphrase.encode("utf-8"))
    return AESGCM(key)


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class SealingWriter(io.RawIOBase):
    """A write-only file: what is written to it lands sealed in `raw`. close() seals the last chunk."""

    def __init__(self, raw, passphrase: str, kind: bytes):
        salt = os.urandom(16)
        self.header = _HEADER.pack(MAGIC, kind, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, salt)
        self._aead = _derive(passphrase, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
        self._raw, self._buffer, self._counter = raw, bytearray(), 0
        raw.write(self.header)

    def writable(self):
        return True

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK:   # keep at least one byte back: the last chunk is sealed on close
            self._emit(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._counter, last), chunk, self.header)
        self._raw.write(_LENGTH.pack(len(sealed)) + sealed)
        self._counter += 1

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buffer), last=True)
            self._buffer.clear()
        super().close()


class OpeningReader(io.RawIOBase):
    """A read-only file over a sealed stream; raises SealedError on a wrong passphrase or damage."""

    def __init__(self, raw, passphrase: str, kind: bytes):
        header = raw.read(_HEADER.size)
        if len(header) < _HEADER.size or not is_sealed(header):
            raise SealedError("not a passphrase-protected kamengd file")
        magic, found_kind, log_n, r, p, salt = _HEADER.unpack(header)
        if found_kind != kind:
            raise SealedError(f"this is a {KINDS.get(found_kind, 'different kind of file')}, "
                              f"not a {KINDS[kind]}")
        # The header is only authenticated once the key is derived: cap what it may
        # ask for, or a forged header could make scrypt take gigabytes and minutes.
        if not (10 <= log_n <= 17 and 1 <= r <= 8 and 1 <= p <= 2):
            raise SealedError("the file's header is damaged")
        self.header, self._raw = header, raw
        self._aead = _derive(passphrase, salt, log_n, r, p)
        self._counter, self._plain, self._done = 0, b"", False

    def readable(self):
        return True

    def _next_chunk(self) -> None:
        length = self._raw.read(_LENGTH.size)
        if len(length) < _LENGTH.size:
            raise SealedError("the file is truncated")
        (size,) = _LENGTH.unpack(length)
        if size > CHUNK + 16:
            raise SealedError("the file is damaged")
        sealed = self._raw.read(size)
        if len(sealed) < size:
            raise SealedError("the file is truncated")
        for last in (False, True):
            try:
                self._plain = self._aead.decrypt(_nonce(self._counter, last), sealed, self.header)
                break
            except InvalidTag:
                continue
        else:
            raise SealedError("wrong passphrase, or the file is damaged" if self._counter == 0
                              else "the file is damaged (a part does not authenticate)")
        self._counter += 1
        if last:
            if self._raw.read(1):
                raise SealedError("the file is damaged (data after its end)")
            self._done = True

    def readinto(self, buffer) -> int:
        while not self._plain and not self._done:
            self._next_chunk()
        n = min(len(buffer), len(self._plain))
        buffer[:n] = self._plain[:n]
        self._plain = self._plain[n:]
        return n


def seal_bytes(data: bytes, passphrase: str, kind: bytes) -> bytes:
    out = io.BytesIO()
    writer = SealingWriter(out, passphrase, kind)
    writer.write(data)
    writer.close()
    return out.getvalue()


def open_bytes(data: bytes, passphrase: str, kind: bytes) -> bytes:
    return OpeningReader(io.BytesIO(data), passphrase, kind).read()
