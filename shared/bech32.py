"""Bech32 (BIP-173) encoding, as age uses it for its keys.

age keys are Bech32 strings longer than BIP-173's 90-character limit, so this module applies no
length limit; everything else is strict: mixed case, characters outside the alphabet, a bad
checksum or non-zero padding bits are refused. It knows nothing of age key types, never
includes the input in an error message (it may be a secret key), and never uses Bech32m.
"""

from __future__ import annotations

from airgap.shared.errors import KeyFileError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {char: value for value, char in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_LENGTH = 6


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _expand_hrp(hrp: str) -> list[int]:
    codes = [ord(char) for char in hrp]
    return [code >> 5 for code in codes] + [0] + [code & 31 for code in codes]


def _checksum(hrp: str, data: list[int]) -> list[int]:
    polymod = _polymod([*_expand_hrp(hrp), *data, *([0] * _CHECKSUM_LENGTH)]) ^ 1
    return [(polymod >> 5 * (5 - index)) & 31 for index in range(_CHECKSUM_LENGTH)]


def _to_five_bits(data: bytes) -> list[int]:
    accumulator, bits, out = 0, 0, []
    for byte in data:
        accumulator = (accumulator << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((accumulator >> bits) & 31)
    if bits:
        out.append((accumulator << (5 - bits)) & 31)
    return out


def _to_eight_bits(groups: list[int]) -> bytes:
    accumulator, bits, out = 0, 0, bytearray()
    for group in groups:
        accumulator = (accumulator << 5) | group
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((accumulator >> bits) & 0xFF)
    # BIP-173: at most 4 bits of padding, and they must be zero, so each string has one decoding.
    if bits >= 5 or accumulator & ((1 << bits) - 1):
        raise KeyFileError("malformed Bech32: non-zero or excess padding bits")
    return bytes(out)


def encode(hrp: str, data: bytes) -> str:
    """Return the lower-case Bech32 string of ``data`` under the human-readable part ``hrp``."""
    hrp = hrp.lower()
    if not hrp or any(not 33 <= ord(char) <= 126 for char in hrp):
        raise KeyFileError("malformed Bech32: invalid human-readable part")
    groups = _to_five_bits(data)
    return hrp + "1" + "".join(CHARSET[group] for group in groups + _checksum(hrp, groups))


def decode(text: str) -> tuple[str, bytes]:
    """Return ``(hrp, data)``; ``hrp`` keeps the case it was written in (age relies on it)."""
    if text.lower() != text and text.upper() != text:
        raise KeyFileError("malformed Bech32: mixed case")
    separator = text.rfind("1")
    if separator < 1 or separator + 1 + _CHECKSUM_LENGTH > len(text):
        raise KeyFileError("malformed Bech32: separator '1' missing or misplaced")
    hrp = text[:separator]
    if any(not 33 <= ord(char) <= 126 for char in hrp):
        raise KeyFileError("malformed Bech32: invalid character in the human-readable part")
    try:
        groups = [_CHARSET_INDEX[char] for char in text[separator + 1 :].lower()]
    except KeyError:
        raise KeyFileError("malformed Bech32: invalid character in the data part") from None
    # The checksum covers the lower-case form, so "AGE-SECRET-KEY-1..." and its lower-case
    # spelling share one checksum, as BIP-173 requires.
    if _polymod([*_expand_hrp(hrp.lower()), *groups]) != 1:
        raise KeyFileError("malformed Bech32: bad checksum")
    return hrp, _to_eight_bits(groups[:-_CHECKSUM_LENGTH])
