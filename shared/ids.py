"""Bundle ids: 26-character, time-ordered, unique (the ULID layout).

48 bits of milliseconds since the epoch, then 80 random bits, in Crockford's base 32, so ids sort
by creation time as plain strings and are safe in any file name.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 26
ID_PATTERN = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def new_bundle_id(*, now: float | None = None) -> str:
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_bundle_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


def bundle_id_of(name: str) -> str | None:
    """The bundle a file name belongs to (``ID.anything``), if it names one."""
    head = name.split(".", 1)[0]
    return head if is_bundle_id(head) else None


def made_at(bundle_id: str) -> float:
    """When ``bundle_id`` was made, in seconds since the epoch (its first 48 bits)."""
    millis = 0
    for char in bundle_id[:10]:
        millis = millis * 32 + _ALPHABET.index(char)
    return millis / 1000
