"""Token values: `<prefix>_<43 base62: 256 random bits><6 base62: CRC32 of what precedes>`.

The prefix lets secret scanners find leaked tokens; the checksum lets a mistyped or truncated
token be refused without any lookup. Only the SHA-256 of a value is ever kept.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 43  # 62**43 > 2**256
CHECKSUM_CHARS = 6  # 62**6 > 2**32
_ALPHABET_SET = frozenset(ALPHABET)
_DIGITS = {char: digit for digit, char in enumerate(ALPHABET)}


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_CHARS)


def generate(prefix: str) -> str:
    body = f"{prefix}_{_base62(secrets.randbits(256), RANDOM_CHARS)}"
    return body + _checksum(body)


def is_well_formed(value: str, prefix: str) -> bool:
    """Prefix, length, alphabet and checksum: everything that can be checked without I/O."""
    head = prefix + "_"
    if len(value) != len(head) + RANDOM_CHARS + CHECKSUM_CHARS or not value.startswith(head):
        return False
    tail = value[len(head) :]
    if not _ALPHABET_SET.issuperset(tail):
        return False
    # Every API call comes here, so the checksum is read as a number rather than the CRC
    # written out; nothing secret is compared (the CRC is of the value the caller sent).
    checksum = 0
    for char in tail[-CHECKSUM_CHARS:]:
        checksum = checksum * 62 + _DIGITS[char]
    return checksum == zlib.crc32(value[:-CHECKSUM_CHARS].encode())


def digest(value: str) -> str:
    """The SHA-256 by which a token is looked up; the value itself is never stored."""
    return hashlib.sha256(value.encode()).hexdigest()
