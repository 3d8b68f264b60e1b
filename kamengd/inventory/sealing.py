"""Key lines turned into sealed rows, in batches that cross a pipe cheaply.

A batch is one bytes object of records (nonce ‖ fingerprint ‖ ciphertext,
one after another) and a JSON array that locates each record's ciphertext
((offset << 32) | length). On SQLite the whole batch is then written with a
single statement that cuts the records apart inside the database
(json_each + substr): binding seven parameters for each of a million rows
costs more than the insert itself. The same batches come from this process
or from kamengd.inventory.sealer, a child process that reads and encrypts
while this one writes.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..vault import FINGERPRINT_BYTES, NONCE_BYTES, Vault
from .importer import check_key, key_has_control_characters

HEAD = NONCE_BYTES + FINGERPRINT_BYTES
# A batch also ends at this many characters of keys: its records stay far
# below 2 GiB, so offsets << 32 fit SQLite's 64-bit integers.
BATCH_CHARACTERS = 1 << 24


@dataclass
class SealedBatch:
    keys: int           # records in this batch
    blank: int          # blank lines of the blocks that ended while this batch was filled
    records: bytes      # nonce ‖ fingerprint ‖ ciphertext, per key
    offsets: str        # JSON: (offset of the record << 32) | length of its ciphertext
    older: bytes = b""  # per key, its fingerprint under each older key version (rotation)

    def rows(self) -> list[tuple[bytes, bytes, bytes]]:
        """(nonce, fingerprint, ciphertext) of each record, for drivers that bind rows."""
        blob, out = self.records, []
        for packed in json.loads(self.offsets):
            at, size = packed >> 32, packed & 0xFFFFFFFF
            out.append((blob[at:at + NONCE_BYTES], blob[at + NONCE_BYTES:at + HEAD],
                        blob[at + HEAD:at + HEAD + size]))
        return out

    def older_fingerprints(self, versions: int) -> list[list[bytes]]:
        """Per key, its fingerprints under the `versions` older key versions."""
        step = versions * FINGERPRINT_BYTES
        return [[self.older[i + v * FINGERPRINT_BYTES:i + (v + 1) * FINGERPRINT_BYTES] for v in range(versions)]
                for i in range(0, len(self.older), step)]


def seal_lines(vault: Vault, product_id: int, lines: Iterable[tuple[int, str]], *, max_key_length: int,
               batch_size: int, share: tuple[int, int] = (0, 1)) -> Iterator[SealedBatch]:
    """seal_blocks of numbered lines one at a time."""
    return seal_blocks(vault, product_id, ((lineno, [line]) for lineno, line in lines),
                       max_key_length=max_key_length, batch_size=batch_size, share=share)


def seal_blocks(vault: Vault, product_id: int, blocks: Iterable[tuple[int, list[str]]], *, max_key_length: int,
                batch_size: int, share: tuple[int, int] = (0, 1)) -> Iterator[SealedBatch]:
    """Check each line (ImportFileError names the first bad one) and seal its key.

    Blocks come from kamengd.inventory.importer.iter_line_blocks: a block is
    checked as a whole, and line by line only when something in it is wrong.
    share=(k, n): of the batches, seal only every n-th from the k-th on (the
    others are read and checked all the same, so every reader finds the same
    first bad line): n processes then seal one file together. A batch's
    blank lines are those of the blocks that ended while it was being filled.
    """
    older = [v for v in vault.versions if v != vault.current_version]
    mine, of = share
    keys: list[str] = []
    blank = characters = number = 0

    def seal() -> SealedBatch:
        plaintexts = "\n".join(keys).encode("utf-8").split(b"\n")   # keys never hold a newline
        parts, offsets, at = [], [], 0
        for nonce, fp, ct in vault.seal_card_keys(product_id, plaintexts):
            parts += (nonce, fp, ct)
            offsets.append((at << 32) | len(ct))
            at += HEAD + len(ct)
        older_fps = [vault.fingerprint(product_id, plaintext, version)
                     for plaintext in plaintexts for version in older]
        return SealedBatch(len(keys), blank, b"".join(parts), json.dumps(offsets, separators=(",", ":")),
                           b"".join(older_fps))

    for first, block in blocks:
        stripped = [line.strip() for line in block]
        found = [key for key in stripped if key]
        if found and (max(map(len, found)) > max_key_length or key_has_control_characters(" ".join(found))):
            for lineno, key in enumerate(stripped, first):   # name the first bad line
                check_key(lineno, key, max_key_length)
        blank += len(stripped) - len(found)
        while found:
            room = min(batch_size - len(keys), 1024)   # and BATCH_CHARACTERS checked often
            taken, found = found[:room], found[room:]
            keys += taken
            characters += sum(map(len, taken))
            if len(keys) >= batch_size or characters >= BATCH_CHARACTERS:
                if number % of == mine:
                    yield seal()
                number += 1
                keys, blank, characters = [], 0, 0
    if (keys or blank) and number % of == mine:
        yield seal()
