"""The header of an age v1 file: its grammar, its MAC, and the X25519 and scrypt stanzas.

This module is everything before the payload: it parses and writes header bytes, wraps and
unwraps the 16-byte file key in recipient stanzas, and computes the header MAC. It knows no
key text format (``age.py`` parses keys) and never sees the payload. It refuses everything
the grammar does not allow (CR, long or missing body lines, padded or non-canonical base64,
an scrypt stanza beside others) with ``AgeHeaderError``, and it never puts header bytes, keys
or passphrases in a message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from airgap.shared.errors import AgeHeaderError, HeaderMacError, KeyFileError

VERSION_LINE = b"age-encryption.org/v1\n"
FILE_KEY_SIZE = 16
MAC_SIZE = 32
# Real headers are a few hundred bytes per recipient; the cap bounds what we buffer before
# we know the input is an age file at all.
MAX_HEADER_SIZE = 1024 * 1024
MAX_STANZAS = 1024

_COLUMNS = 64
_MAC_LINE_PREFIX = b"--- "
_FOOTER = b"---"
_ARGUMENT = re.compile(rb"[\x21-\x7e]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*")
_X25519_INFO = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_WRAP_NONCE = bytes(12)
_WRAPPED_KEY_SIZE = FILE_KEY_SIZE + 16
_DECIMAL = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its arguments (the first is its type) and its decoded body."""

    args: tuple[str, ...]
    body: bytes

    @property
    def type(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Header:
    """A parsed header; ``mac_input`` is the exact bytes the MAC covers, as they were read."""

    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, the only form age writes."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str | bytes, *, what: str) -> bytes:
    """Decode unpadded, canonical base64, so that every value has exactly one encoding."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if _BASE64.fullmatch(raw) is None or len(raw) % 4 == 1:
        raise AgeHeaderError(f"age header: {what} is not unpadded base64")
    try:
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise AgeHeaderError(f"age header: {what} is not unpadded base64") from None
    if b64encode(data).encode("ascii") != raw:
        raise AgeHeaderError(f"age header: {what} is not canonical base64")
    return data


def hkdf_sha256(key: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=info).derive(key)


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    mac_key = hkdf_sha256(file_key, salt=b"", info=b"header")
    return hmac.new(mac_key, mac_input, "sha256").digest()


def verify_mac(header: Header, file_key: bytes) -> None:
    if not hmac.compare_digest(header_mac(file_key, header.mac_input), header.mac):
        raise HeaderMacError("age header MAC does not verify")


def encode_header(stanzas: Sequence[Stanza], file_key: bytes) -> bytes:
    """Return the complete header, MAC line included, for ``stanzas``."""
    parts = [VERSION_LINE]
    for stanza in stanzas:
        parts.append(b"-> " + " ".join(stanza.args).encode("ascii") + b"\n")
        text = b64encode(stanza.body).encode("ascii")
        # Every body ends with a short line, an empty one when the last full line fills it.
        for start in range(0, len(text) + 1, _COLUMNS):
            parts.append(text[start : start + _COLUMNS] + b"\n")
    mac_input = b"".join(parts) + _FOOTER
    return mac_input + b" " + b64encode(header_mac(file_key, mac_input)).encode("ascii") + b"\n"


def check_header_prefix(buffer: bytes | bytearray) -> None:
    """Fail early when the first bytes cannot start an age v1 header."""
    head = bytes(buffer[: len(VERSION_LINE)])
    if VERSION_LINE.startswith(head):
        return
    if head.startswith(b"age-encryption.org/"):
        raise AgeHeaderError("age header: unsupported version line")
    raise AgeHeaderError("age header: not an age file (no age version line)")


def find_header_end(buffer: bytearray, start: int) -> tuple[int, int]:
    """Return ``(end, resume)``: the offset just past the MAC line (or -1) and where to resume.

    No stanza line starts with "---" (argument lines start with "->", body lines are base64),
    so the first such line is the MAC line; the parser refuses anything else later.
    """
    footer = buffer.find(b"\n" + _FOOTER, start)
    if footer < 0:
        return -1, max(start, len(buffer) - len(_FOOTER))
    newline = buffer.find(b"\n", footer + 1)
    return (newline + 1 if newline >= 0 else -1), footer


def parse_header(raw: bytes) -> Header:
    """Parse a complete header, ``raw`` ending with the MAC line and its newline."""
    lines = raw.split(b"\n")
    if lines[-1] != b"" or len(lines) < 3:
        raise AgeHeaderError("age header: truncated")
    if lines[0] + b"\n" != VERSION_LINE:
        raise AgeHeaderError("age header: unsupported version line")
    mac_line = lines[-2]
    if not mac_line.startswith(_MAC_LINE_PREFIX):
        raise AgeHeaderError("age header: malformed MAC line")
    mac = b64decode(mac_line[len(_MAC_LINE_PREFIX) :], what="header MAC")
    if len(mac) != MAC_SIZE:
        raise AgeHeaderError("age header: MAC has the wrong length")
    stanzas = _parse_stanzas(lines[1:-2])
    mac_input = raw[: len(raw) - len(mac_line) - 1 + len(_FOOTER)]
    return Header(stanzas=stanzas, mac=mac, mac_input=mac_input)


def _parse_stanzas(lines: list[bytes]) -> tuple[Stanza, ...]:
    stanzas: list[Stanza] = []
    index = 0
    while index < len(lines):
        if len(stanzas) >= MAX_STANZAS:
            raise AgeHeaderError(f"age header: more than {MAX_STANZAS} stanzas")
        args = _parse_arguments(lines[index])
        body, index = _parse_body(lines, index + 1)
        stanzas.append(Stanza(args=args, body=body))
    if not stanzas:
        raise AgeHeaderError("age header: no recipient stanza")
    if len(stanzas) > 1 and any(stanza.type == "scrypt" for stanza in stanzas):
        raise AgeHeaderError("age header: an scrypt stanza must be the only stanza")
    return tuple(stanzas)


def _parse_arguments(line: bytes) -> tuple[str, ...]:
    if not line.startswith(b"-> "):
        raise AgeHeaderError("age header: malformed stanza line")
    args = line[3:].split(b" ")
    if any(_ARGUMENT.fullmatch(arg) is None for arg in args):
        raise AgeHeaderError("age header: empty or invalid stanza argument")
    return tuple(arg.decode("ascii") for arg in args)


def _parse_body(lines: list[bytes], index: int) -> tuple[bytes, int]:
    """Decode body lines from ``index`` up to and including the first short one."""
    chunks: list[bytes] = []
    while index < len(lines):
        line = lines[index]
        index += 1
        if len(line) > _COLUMNS:
            raise AgeHeaderError("age header: stanza body line longer than 64 columns")
        chunks.append(b64decode(line, what="stanza body"))
        if len(line) < _COLUMNS:
            return b"".join(chunks), index
    raise AgeHeaderError("age header: stanza body does not end with a short line")


# Recipient stanzas. An unwrap function returns None when a stanza is not for this key (the
# spec's "no match"), but a stanza of its type that breaks its own rules is a header failure.


def _seal_file_key(key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_WRAP_NONCE, file_key, None)


def _open_file_key(key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(_WRAP_NONCE, body, None)
    except InvalidTag:
        return None


def x25519_wrap(public_key: bytes, file_key: bytes) -> Stanza:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise KeyFileError("recipient is a low-order X25519 point") from None
    key = hkdf_sha256(shared, salt=share + public_key, info=_X25519_INFO)
    return Stanza(args=("X25519", b64encode(share)), body=_seal_file_key(key, file_key))


def x25519_unwrap(private_key: X25519PrivateKey, stanzas: Sequence[Stanza]) -> bytes | None:
    public_key = private_key.public_key().public_bytes_raw()
    for stanza in stanzas:
        if stanza.type != "X25519":
            continue
        if len(stanza.args) != 2:
            raise AgeHeaderError("age header: X25519 stanza needs exactly one argument")
        share = b64decode(stanza.args[1], what="X25519 share")
        if len(share) != 32:
            raise AgeHeaderError("age header: X25519 share is not 32 bytes")
        if len(stanza.body) != _WRAPPED_KEY_SIZE:
            raise AgeHeaderError("age header: X25519 stanza body has the wrong length")
        try:
            shared = private_key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise AgeHeaderError("age header: X25519 share is a low-order point") from None
        key = hkdf_sha256(shared, salt=share + public_key, info=_X25519_INFO)
        if (file_key := _open_file_key(key, stanza.body)) is not None:
            return file_key
    return None


def _scrypt_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase)


def scrypt_wrap(passphrase: bytes, file_key: bytes, *, work_factor: int) -> Stanza:
    salt = os.urandom(16)
    body = _seal_file_key(_scrypt_key(passphrase, salt, work_factor), file_key)
    return Stanza(args=("scrypt", b64encode(salt), str(work_factor)), body=body)


def scrypt_unwrap(
    passphrase: bytes, stanzas: Sequence[Stanza], *, max_work_factor: int
) -> bytes | None:
    # parse_header already refused an scrypt stanza that is not alone.
    for stanza in stanzas:
        if stanza.type != "scrypt":
            continue
        if len(stanza.args) != 3:
            raise AgeHeaderError("age header: scrypt stanza needs a salt and a work factor")
        salt = b64decode(stanza.args[1], what="scrypt salt")
        if len(salt) != 16:
            raise AgeHeaderError("age header: scrypt salt is not 16 bytes")
        text = stanza.args[2]
        if _DECIMAL.fullmatch(text) is None:
            raise AgeHeaderError("age header: scrypt work factor is not a plain decimal")
        if len(text) > 2 or int(text) > max_work_factor:
            raise AgeHeaderError(f"age header: scrypt work factor above {max_work_factor}")
        if len(stanza.body) != _WRAPPED_KEY_SIZE:
            raise AgeHeaderError("age header: scrypt stanza body has the wrong length")
        try:
            key = _scrypt_key(passphrase, salt, int(text))
        except MemoryError:  # a work factor within the cap, on a machine with less memory
            raise AgeHeaderError(
                f"age header: scrypt work factor {text} needs more memory than there is"
            ) from None
        if (file_key := _open_file_key(key, stanza.body)) is not None:
            return file_key
    return None
