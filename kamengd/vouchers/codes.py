"""Voucher codes: random characters from an alphabet without look-alikes, and a check character.

The check character is Luhn mod N over the alphabet (any length of alphabet): a code typed
with one character wrong, or two neighbours swapped, is caught at the terminal before it is
looked up. Codes are shown in groups of four; typed ones may have any case, spaces or dashes.
"""
from __future__ import annotations

import os
import secrets

# No 0/O, 1/I/L look-alikes: 32 characters, 5 bits each.
DEFAULT_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
DEFAULT_LENGTH = 16
MIN_LENGTH, MAX_LENGTH = 8, 32
# A code must hold at least this much randomness (bits): guessing one is hopeless.
MIN_BITS = 40
# Pairs an alphabet may not hold both of (read off a phone's screen or a printed card).
LOOK_ALIKES = (("0", "O"), ("1", "I"), ("1", "L"), ("I", "L"), ("0", "Q"), ("O", "Q"))
SEPARATORS = " -_\t"


class CodeError(ValueError):
    pass


def check_alphabet(alphabet: str) -> str:
    """The alphabet as it is stored, or CodeError saying what is wrong with it."""
    alphabet = (alphabet or "").strip().upper()
    if not 10 <= len(alphabet) <= 36 or not all(c.isascii() and c.isalnum() for c in alphabet):
        raise CodeError("alphabet: 10 to 36 letters and digits")
    if len(set(alphabet)) != len(alphabet):
        raise CodeError("alphabet: a character is in it twice")
    both = [f"{a}/{b}" for a, b in LOOK_ALIKES if a in alphabet and b in alphabet]
    if both:
        raise CodeError("alphabet: characters that look alike: %s" % ", ".join(both))
    return alphabet


def check_length(length: int, alphabet: str) -> int:
    if not isinstance(length, int) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise CodeError(f"length: {MIN_LENGTH} to {MAX_LENGTH} characters")
    bits = (length - 1) * (len(alphabet).bit_length() - 1)
    if bits < MIN_BITS:
        raise CodeError(f"length: too short for this alphabet (at least {MIN_BITS} bits of randomness)")
    return length


def check_character(body: str, alphabet: str) -> str:
    """Luhn mod N: the character that makes the whole code's sum 0 mod N."""
    n, total, factor = len(alphabet), 0, 2
    for ch in reversed(body):
        addend = factor * alphabet.index(ch)
        total += addend // n + addend % n
        factor = 3 - factor
    return alphabet[(n - total % n) % n]


def generate(alphabet: str, length: int) -> str:
    body = "".join(secrets.choice(alphabet) for _ in range(length - 1))
    return body + check_character(body, alphabet)


def generate_many(alphabet: str, length: int, count: int) -> list[str]:
    """`count` codes at once (a batch of 100,000 in a fraction of a second): random bytes from the
    OS, those at or above the largest multiple of the alphabet's size dropped (no character more
    likely than another), the rest mapped onto the alphabet in C by bytes.translate."""
    n = len(alphabet)
    limit = 256 - 256 % n
    table = bytes(ord(alphabet[b % n]) for b in range(limit)) + bytes(256 - limit)
    reject = bytes(range(limit, 256))
    body = length - 1
    need = body * count
    chars = b""
    while len(chars) < need:
        chars += os.urandom((need - len(chars)) * 2 + 64).translate(table, reject)
    text = chars[:need].decode("ascii")
    bodies = [text[i:i + body] for i in range(0, need, body)]
    return [b + check_character(b, alphabet) for b in bodies]


def normalise(typed: str) -> str:
    """Upper case, separators dropped: what is hashed for the lookup."""
    return "".join(c for c in str(typed or "").upper() if c not in SEPARATORS)[:64]


def is_well_formed(code: str, alphabet: str) -> bool:
    """A normalised code of this alphabet whose check character matches."""
    if len(code) < MIN_LENGTH or any(c not in alphabet for c in code):
        return False
    return check_character(code[:-1], alphabet) == code[-1]


def grouped(code: str) -> str:
    """ABCD-EFGH-JKLM-NPQR: how a code is shown and printed."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))
