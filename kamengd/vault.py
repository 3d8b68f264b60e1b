"""Card-key encryption: AES-256-GCM with keys kept outside the database.

The key file holds one or more 32-byte data keys, each with a version; new
ciphertexts use the newest, and every row records the version it was
written with so keys can be rotated (K4). From each data key HKDF derives
two independent keys: one for AES-GCM, one for the HMAC-SHA256 fingerprint
that finds duplicates without decrypting.

A card key's associated data is its product id and fingerprint. Within a
product the fingerprint is unique, so this binds each ciphertext to its
row: copied to another row (or product) it no longer decrypts.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import KamengdError

KEY_BYTES = 32
NONCE_BYTES = 12
# HMAC-SHA256 truncated to 128 bits (RFC 2104 §5 allows half the output):
# collisions stay out of reach, and the unique index is smaller and faster.
FINGERPRINT_BYTES = 16
_HEADER = ("# kamengd data key. Anyone with this file can read the card keys in a backup;\n"
           "# without it nobody can, you included. Keep a copy: kamengd key backup.\n")


class VaultError(KamengdError):
    pass


class DecryptionError(VaultError):
    """A ciphertext did not authenticate: wrong key, or moved/altered data."""


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"kamengd/" + purpose).derive(key)


def _hmac_pads(key: bytes):
    """HMAC-SHA256 (RFC 2104) with the keyed pads hashed once: copying them per
    message is twice as fast as hmac.digest(), which re-keys on every call."""
    block = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)))


def card_key_aad(product_id: int, fingerprint: bytes) -> bytes:
    return b"kamengd/card-key\x00" + product_id.to_bytes(8, "big") + fingerprint


class Vault:
    def __init__(self, keys: dict[int, bytes], source: Path | None = None):
        if not keys:
            raise VaultError("no data key")
        self._source = source
        self._aead, self._fp_pads, self._seal_keys, self._lookup_pads = {}, {}, {}, {}
        self._voucher_pads = {}
        self._add(keys)
        self.current_version = max(keys)

    def _add(self, keys: dict[int, bytes]) -> None:
        for version, key in keys.items():
            if len(key) != KEY_BYTES or not 0 < version < 32768:
                raise VaultError(f"data key version {version} is invalid")
        for v, k in keys.items():
            self._fp_pads.setdefault(v, _hmac_pads(_derive(k, b"card-key/fingerprint")))
            self._seal_keys.setdefault(v, _derive(k, b"audit/seal"))
            self._lookup_pads.setdefault(v, _hmac_pads(_derive(k, b"order/lookup")))
            self._voucher_pads.setdefault(v, _hmac_pads(_derive(k, b"voucher/lookup")))
            self._aead.setdefault(v, AESGCM(_derive(k, b"card-key/aes-256-gcm")))

    def refresh(self) -> None:
        """Learn versions a rotation added to the key file since this vault was loaded."""
        if self._source is not None:
            try:
                self._add(parse_key_file(Path(self._source).read_text(encoding="ascii"), str(self._source)))
            except (OSError, UnicodeDecodeError, VaultError):
                pass

    def _ensure(self, version: int) -> None:
        """A row written under a version this vault has not seen: a rotation added it
        to the key file after the vault was loaded. Read the file again (reading only
        adds versions; what this vault writes with does not change under it)."""
        if version not in self._aead:
            self.refresh()

    @property
    def source(self) -> Path | None:
        """The key file this vault was loaded from (None: built from keys in memory)."""
        return self._source

    @property
    def versions(self) -> list[int]:
        return sorted(self._aead)

    # -- buyers' lookups -----------------------------------------------------
    def lookup_tags(self, email: str, password: str) -> list[bytes]:
        """HMAC-SHA256 of a buyer's e-mail (case-folded) and query password, under each
        key version this vault holds, the current one first: what an order stores to be
        found by them with one indexed query. Keyed by the data key, never in the
        database: the tags alone let nobody guess passwords."""
        message = email.strip().casefold().encode() + b"\x00" + password.encode()
        tags = []
        for version in sorted(self._lookup_pads, key=lambda v: v != self.current_version):
            inner_pad, outer_pad = self._lookup_pads[version]
            inner = inner_pad.copy()
            inner.update(message)
            outer = outer_pad.copy()
            outer.update(inner.digest())
            tags.append(outer.digest())
        return tags

    # -- vouchers ------------------------------------------------------------
    def voucher_lookups(self, code: str) -> list[tuple[int, bytes]]:
        """(key version, HMAC of a normalised voucher code) under each key version, the
        current one first: a code is found by any of them without decrypting anything."""
        found = []
        for version in sorted(self._voucher_pads, key=lambda v: v != self.current_version):
            inner_pad, outer_pad = self._voucher_pads[version]
            inner = inner_pad.copy()
            inner.update(code.encode("ascii"))
            outer = outer_pad.copy()
            outer.update(inner.digest())
            found.append((version, outer.digest()[:FINGERPRINT_BYTES]))
        return found

    # -- card keys ---------------------------------------------------------
    def fingerprint(self, product_id: int, plaintext: bytes, version: int | None = None) -> bytes:
        inner_pad, outer_pad = self._fp_pads[self.current_version if version is None else version]
        inner = inner_pad.copy()
        inner.update(product_id.to_bytes(8, "big") + plaintext)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.digest()[:FINGERPRINT_BYTES]

    def seal_card_keys(self, product_id: int, plaintexts: list[bytes]) -> Iterator[tuple[bytes, bytes, bytes]]:
        """(nonce, fingerprint, ciphertext) of each plaintext, as fingerprint() and
        encrypt_card_key() would give them: the same steps in one tight loop, for imports."""
        inner_pad, outer_pad = self._fp_pads[self.current_version]
        encrypt = self._aead[self.current_version].encrypt
        prefix = product_id.to_bytes(8, "big")
        aad_prefix = card_key_aad(product_id, b"")
        nonces = os.urandom(NONCE_BYTES * len(plaintexts))
        for i, plaintext in enumerate(plaintexts):
            inner = inner_pad.copy()
            inner.update(prefix + plaintext)
            outer = outer_pad.copy()
            outer.update(inner.digest())
            fp = outer.digest()[:FINGERPRINT_BYTES]
            nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
            yield nonce, fp, encrypt(nonce, plaintext, aad_prefix + fp)

    def encrypt_card_key(self, product_id: int, plaintext: bytes, fingerprint: bytes) -> tuple[bytes, bytes, int]:
        """Returns (nonce, ciphertext, key_version)."""
        nonce = os.urandom(NONCE_BYTES)
        ct = self._aead[self.current_version].encrypt(nonce, plaintext,
                                                      card_key_aad(product_id, fingerprint))
        return nonce, ct, self.current_version

    def decrypt_card_key(self, product_id: int, fingerprint: bytes, nonce: bytes,
                         ciphertext: bytes, key_version: int) -> bytes:
        self._ensure(key_version)
        return self._decrypt(key_version, nonce, ciphertext, card_key_aad(product_id, fingerprint))

    # -- the audit log's seal ------------------------------------------------
    def seal(self, message: bytes, version: int | None = None) -> str:
        if version is not None:
            self._ensure(version)
        key = self._seal_keys.get(self.current_version if version is None else version)
        if key is None:
            raise DecryptionError(f"data key version {version} is not in the key file")
        return hmac.digest(key, message, "sha256").hex()

    # -- other secrets (payment channel keys) ----------------------------
    def encrypt_secret(self, context: str, plaintext: bytes) -> tuple[bytes, bytes, int]:
        nonce = os.urandom(NONCE_BYTES)
        ct = self._aead[self.current_version].encrypt(nonce, plaintext, b"kamengd/secret\x00" + context.encode())
        return nonce, ct, self.current_version

    def decrypt_secret(self, context: str, nonce: bytes, ciphertext: bytes, key_version: int) -> bytes:
        self._ensure(key_version)
        return self._decrypt(key_version, nonce, ciphertext, b"kamengd/secret\x00" + context.encode())

    def _decrypt(self, version: int, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        aead = self._aead.get(version)
        if aead is None:
            raise DecryptionError(f"data key version {version} is not in the key file")
        try:
            return aead.decrypt(bytes(nonce), bytes(ciphertext), aad)
        except InvalidTag:
            raise DecryptionError("ciphertext does not authenticate (wrong data key or altered row)") from None


# -- the key file -------------------------------------------------------------
def parse_key_file(text: str, source: str = "key file") -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        version, sep, encoded = line.partition(":")
        try:
            if not sep:
                raise ValueError
            key = base64.b64decode(encoded.strip(), validate=True)
            number = int(version)
        except ValueError:
            raise VaultError(f"{source}: line {lineno} is not VERSION:BASE64KEY") from None
        if len(key) != KEY_BYTES:
            raise VaultError(f"{source}: line {lineno}: key is not {KEY_BYTES} bytes")
        keys[number] = key
    if not keys:
        raise VaultError(f"{source}: holds no key")
    return keys


def render_key_file(keys: dict[int, bytes]) -> str:
    return _HEADER + "".join(f"{v}:{base64.b64encode(k).decode()}\n" for v, k in sorted(keys.items()))


def load_vault(path: Path) -> Vault:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise VaultError(f"data key file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VaultError(f"cannot read data key file {path}: {exc}") from None
    return Vault(parse_key_file(text, str(path)), source=Path(path))


def write_secret_file(path: Path, content: str | bytes, owner_like: Path | None = None) -> None:
    """Create a new file readable by its owner only; never overwrite one. As root,
    give it the owner of `owner_like` (the service user keeps reading its files)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content.encode("utf-8") if isinstance(content, str) else content)
        fh.flush()
        os.fsync(fh.fileno())
    if owner_like is not None and os.geteuid() == 0 and Path(owner_like).exists():
        st = Path(owner_like).stat()
        os.chown(path, st.st_uid, st.st_gid)


def generate_key_file(path: Path) -> None:
    write_secret_file(Path(path), render_key_file({1: os.urandom(KEY_BYTES)}))


@contextmanager
def key_file_lock(path: Path):
    """Serialise every read-modify-write of the key file (rotate, retire, restore):
    without it two of them could each drop the version the other just added."""
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def replace_key_file(path: Path, keys: dict[int, bytes]) -> None:
    """Rewrite the key file atomically (a crash leaves the old or the new file,
    never half of one), keeping its owner; running servers pick it up (get_vault)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    write_secret_file(tmp, render_key_file(keys), owner_like=path)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def key_file_signature(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
