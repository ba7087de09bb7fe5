"""Token values: `<prefix>_<43 base62: 256 random bits><6 base62: CRC32 of what precedes>`.

The prefix lets secret scanners find leaked tokens; the checksum lets a mistyped or truncated
token be refused without any lookup. Only the SHA-256 of a value is ever kept.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import zlib
from collections.abc import Callable

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 43  # 62**43 > 2**256
CHECKSUM_CHARS = 6  # 62**6 > 2**32
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
    if not _shape(prefix)(value):
        return False
    # Every API call comes here, so the checksum is read as a number rather than the CRC
    # written out; nothing secret is compared (the CRC is of the value the caller sent).
    checksum = 0
    for char in value[-CHECKSUM_CHARS:]:
        checksum = checksum * 62 + _DIGITS[char]
    return checksum == zlib.crc32(value[:-CHECKSUM_CHARS].encode())


@functools.lru_cache(maxsize=16)
def _shape(prefix: str) -> Callable[[str], re.Match[str] | None]:
    """The prefix, `_` and the base62 characters, in one match (a deployment has one prefix)."""
    body = f"[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}"
    return re.compile(re.escape(prefix) + "_" + body).fullmatch


def digest(value: str) -> str:
    """The SHA-256 by which a token is looked up; the value itself is never stored."""
    return hashlib.sha256(value.encode()).hexdigest()
