"""age v1 encryption (https://age-encryption.org/v1): keys, key files and the payload stages.

``AgeEncryptor`` and ``AgeDecryptor`` are streaming stages (``update(chunk)``, ``finish()``;
the decryptor's ``update`` hands back a bytearray of its own) that own only their buffer: they
never open files, never touch a terminal, and never run the ``age`` binary. X25519 and scrypt
recipients are supported; armor and post-quantum recipients are not. Messages name the failed
check and never contain key material, passphrases or plaintext. The header and its stanzas
live in ``age_header``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from airgap.shared import bech32
from airgap.shared.age_header import (
    FILE_KEY_SIZE,
    MAX_HEADER_SIZE,
    Header,
    Stanza,
    check_header_prefix,
    encode_header,
    find_header_end,
    hkdf_sha256,
    parse_header,
    scrypt_unwrap,
    scrypt_wrap,
    verify_mac,
    x25519_unwrap,
    x25519_wrap,
)
from airgap.shared.errors import (
    AgeHeaderError,
    KeyFileError,
    NoIdentityMatchError,
    PayloadAuthError,
    UsageError,
    VerificationError,
)

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
NONCE_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE

_IDENTITY_HRP = "AGE-SECRET-KEY-"
_RECIPIENT_HRP = "age"


@dataclass(frozen=True)
class X25519Recipient:
    """An ``age1...`` public key."""

    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        hrp, data = bech32.decode(text)
        if hrp != _RECIPIENT_HRP:
            raise KeyFileError("malformed recipient: not an age1... X25519 public key")
        if len(data) != 32:
            raise KeyFileError("malformed recipient: X25519 public key is not 32 bytes")
        return cls(public_key=data)

    def encode(self) -> str:
        return bech32.encode(_RECIPIENT_HRP, self.public_key)

    def wrap(self, file_key: bytes) -> Stanza:
        return x25519_wrap(self.public_key, file_key)


@dataclass(frozen=True, repr=False)
class X25519Identity:
    """An ``AGE-SECRET-KEY-1...`` private key; its repr never shows the scalar."""

    scalar: bytes
    _key: X25519PrivateKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.scalar) != 32:
            raise KeyFileError("malformed secret key: X25519 scalar is not 32 bytes")
        object.__setattr__(self, "_key", X25519PrivateKey.from_private_bytes(self.scalar))

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(scalar=os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        hrp, data = bech32.decode(text)
        # age writes and accepts only the upper-case spelling of secret keys.
        if hrp != _IDENTITY_HRP:
            raise KeyFileError("malformed secret key: not an AGE-SECRET-KEY-1... X25519 key")
        return cls(scalar=data)

    def encode(self) -> str:
        return bech32.encode(_IDENTITY_HRP, self.scalar).upper()

    @property
    def recipient(self) -> X25519Recipient:
        return X25519Recipient(public_key=self._key.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient.encode()!r})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        return x25519_unwrap(self._key, stanzas)


class ScryptRecipient:
    """A passphrase to encrypt to; it must be the file's only recipient."""

    def __init__(self, passphrase: bytes, *, work_factor: int = 18) -> None:
        if not passphrase:
            raise UsageError("the passphrase is empty")
        if not 1 <= work_factor <= 30:
            raise UsageError("scrypt work factor must be between 1 and 30")
        self._passphrase = passphrase
        self.work_factor = work_factor

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self.work_factor})"

    def wrap(self, file_key: bytes) -> Stanza:
        return scrypt_wrap(self._passphrase, file_key, work_factor=self.work_factor)

    def opens(self, key: PayloadKey) -> bool:
        """Whether this passphrase is the one ``key``'s header wraps its file key with."""
        header = parse_header(key.preamble[:-NONCE_SIZE])
        found = scrypt_unwrap(
            self._passphrase, header.stanzas, max_work_factor=ScryptIdentity.MAX_WORK_FACTOR
        )
        return found == key.file_key


class ScryptIdentity:
    """A passphrase to decrypt with; refuses work factors above ``max_work_factor``."""

    MAX_WORK_FACTOR = 22  # age's own default cap: 4 GiB of memory, seconds of work

    def __init__(self, passphrase: bytes, *, max_work_factor: int = MAX_WORK_FACTOR) -> None:
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self.max_work_factor})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        return scrypt_unwrap(self._passphrase, stanzas, max_work_factor=self.max_work_factor)


Identity = X25519Identity | ScryptIdentity
Recipient = X25519Recipient | ScryptRecipient


K = TypeVar("K")


def _key_lines(text: str) -> list[tuple[int, str]]:
    """Numbered lines that are neither blank nor '#' comments; CRLF is tolerated, as age does."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]


def parse_identities(text: str) -> list[X25519Identity]:
    """Parse an age identity file; each error names the line, never its content."""
    return _parse_lines(text, X25519Identity.parse, "identity file", "no secret key")


def parse_recipients(text: str) -> list[X25519Recipient]:
    """Parse an age recipients file: one ``age1...`` key per line."""
    return _parse_lines(text, X25519Recipient.parse, "recipients file", "no recipient")


def _parse_lines(text: str, parse: Callable[[str], K], what: str, none: str) -> list[K]:
    keys = []
    for number, line in _key_lines(text):
        try:
            keys.append(parse(line))
        except KeyFileError as exc:
            raise KeyFileError(f"{what} line {number}: {exc.message}") from None
    if not keys:
        raise KeyFileError(f"{what} holds {none}")
    return keys


def format_identity_file(identity: X25519Identity, *, created: datetime) -> str:
    """The identity file age-keygen writes; a naive ``created`` is taken as local time."""
    if created.tzinfo is None:
        created = created.astimezone()
    stamp = created.replace(microsecond=0).isoformat()
    if stamp.endswith("+00:00"):
        # Go's RFC 3339 layout, which age-keygen uses, writes "Z" for a zero UTC offset.
        stamp = stamp.removesuffix("+00:00") + "Z"
    return f"# created: {stamp}\n# public key: {identity.recipient.encode()}\n{identity.encode()}\n"


def _chunk_nonce(counter: int, *, last: bool) -> bytes:
    # STREAM nonce: 11-byte big-endian chunk counter, then 1 if this is the final chunk.
    return ((counter << 8) | last).to_bytes(12, "big")


def _payload_cipher(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(hkdf_sha256(file_key, salt=nonce, info=b"payload"))


@dataclass(frozen=True, repr=False)
class PayloadKey:
    """The secret that makes one encryption repeatable: the file key, and the header and
    payload nonce that precede the payload. Encrypting the same plaintext with the same
    PayloadKey gives the same bytes, which lets an interrupted send be continued."""

    file_key: bytes
    preamble: bytes  # the header, then the 16-byte payload nonce

    @classmethod
    def new(cls, recipients: Sequence[Recipient]) -> PayloadKey:
        if not recipients:
            raise UsageError("age encryption needs at least one recipient")
        if len(recipients) > 1 and any(isinstance(r, ScryptRecipient) for r in recipients):
            raise UsageError("a passphrase cannot be combined with other recipients")
        file_key = os.urandom(FILE_KEY_SIZE)
        header = encode_header([recipient.wrap(file_key) for recipient in recipients], file_key)
        return cls(file_key, header + os.urandom(NONCE_SIZE))


class AgeEncryptor:
    """A streaming stage: update(chunk) -> bytes, finish() -> bytes. Emits the header with the
    first output. A full chunk is held back until more input shows it is not the last."""

    def __init__(self, recipients: Sequence[Recipient], *, key: PayloadKey | None = None) -> None:
        key = key or PayloadKey.new(recipients)
        self._preamble = key.preamble
        self._cipher = _payload_cipher(key.file_key, key.preamble[-NONCE_SIZE:])
        self._pending = bytearray()
        self._counter = 0
        self._finished = False

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise UsageError("AgeEncryptor.update() called after finish()")
        out = [self._preamble]
        self._preamble = b""
        view = memoryview(data)
        pending = self._pending
        if pending:
            room = CHUNK_SIZE - len(pending)
            if len(view) <= room:
                pending += view
                return b"".join(out)
            pending += view[:room]
            view = view[room:]
            out.append(self._seal(pending, last=False))
            pending.clear()
        # Seal whole chunks straight from the caller's buffer, keeping back at least one byte.
        count = (len(view) - 1) // CHUNK_SIZE if view else 0
        for index in range(count):
            out.append(self._seal(view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE], last=False))
        pending += view[count * CHUNK_SIZE :]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finished:
            raise UsageError("AgeEncryptor.finish() called twice")
        self._finished = True
        out = self._preamble + self._seal(self._pending, last=True)
        self._preamble = b""
        self._pending = bytearray()
        return out

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        nonce = _chunk_nonce(self._counter, last=last)
        self._counter += 1
        return self._cipher.encrypt(nonce, plaintext, None)


class AgeDecryptor:
    """A streaming stage. Buffers only what it must (the header, at most one 64 KiB chunk + tag).
    Releases plaintext of a chunk as soon as that chunk authenticates.

    Released plaintext is authenticated chunk by chunk, but only a finish() that returns proves
    the stream complete. When a later chunk of the same update() fails, the plaintext before it
    is still returned and the error is raised by the next call, as a reader returns data first.
    """

    def __init__(self, identities: Sequence[Identity]) -> None:
        if not identities:
            raise UsageError("age decryption needs at least one identity")
        self._identities = tuple(identities)
        self._buffer = bytearray()  # the header, then the nonce, then one partial chunk
        self._scan_from = 0
        self._header: Header | None = None
        self._file_key = b""
        self._cipher: ChaCha20Poly1305 | None = None
        self._counter = 0
        self._last_seen = False
        self._error: VerificationError | None = None
        self._finished = False

    @property
    def recipient_types(self) -> tuple[str, ...]:
        """Stanza types in the header, in order; empty until the header is parsed."""
        return tuple(s.type for s in self._header.stanzas) if self._header else ()

    def update(self, data: bytes | memoryview) -> bytearray:
        """Takes a view too: nothing of ``data`` is kept past the call but a copy. Returns the
        plaintext of every chunk this input completes, in a buffer no one else holds (opening
        the chunks into it, rather than joining them, saves a copy of the payload)."""
        self._check_usable()
        try:
            view = memoryview(data)
            if self._header is None:
                view = self._read_header(view)
            if self._header is None:
                return bytearray()
            return self._read_payload(view)
        except VerificationError as exc:
            # Errors are sticky: a failed stream never continues, and finish() reports the cause.
            self._error = exc
            raise

    def finish(self) -> bytes:
        self._check_usable()
        self._finished = True
        if self._header is None:
            raise AgeHeaderError("age header: input ends inside the header")
        if self._cipher is None:
            raise AgeHeaderError("age file ends before the payload nonce")
        if self._last_seen:
            return b""
        return self._open_final(bytes(self._buffer))

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise UsageError("AgeDecryptor used after finish()")

    def _read_header(self, view: memoryview) -> memoryview:
        """Buffer header bytes (at most the cap); return the input left over after the header."""
        buffer = self._buffer
        before = len(buffer)
        buffer += view[: MAX_HEADER_SIZE + 1 - before]
        check_header_prefix(buffer)
        end, self._scan_from = find_header_end(buffer, self._scan_from)
        if end < 0:
            if len(buffer) > MAX_HEADER_SIZE:
                raise AgeHeaderError(f"age header: longer than {MAX_HEADER_SIZE} bytes")
            return view[len(view) :]
        header = parse_header(bytes(buffer[:end]))
        self._file_key = self._unwrap(header)
        self._header = header
        leftover = end - before  # where the payload starts in this call's input
        del buffer[:]
        return view[leftover:]

    def _unwrap(self, header: Header) -> bytes:
        for identity in self._identities:
            file_key = identity.unwrap(header.stanzas)
            if file_key is not None:
                verify_mac(header, file_key)
                return file_key
        if any(s.type == "scrypt" for s in header.stanzas) and any(
            isinstance(i, ScryptIdentity) for i in self._identities
        ):
            raise NoIdentityMatchError(
                "the passphrase does not open the age file key",
                hint="check the passphrase (AIRGAP_PASSPHRASE, or the prompt)",
            )
        raise NoIdentityMatchError("no identity opens the age file key")

    def _read_payload(self, view: memoryview) -> bytearray:
        buffer = self._buffer
        if self._cipher is None:
            room = NONCE_SIZE - len(buffer)
            buffer += view[:room]
            view = view[room:]
            if len(buffer) < NONCE_SIZE:
                return bytearray()
            self._cipher = _payload_cipher(self._file_key, bytes(buffer))
            buffer.clear()
        chunks: list[bytes | memoryview] = []
        if buffer:
            room = ENCRYPTED_CHUNK_SIZE - len(buffer)
            buffer += view[:room]
            view = view[room:]
            if len(buffer) < ENCRYPTED_CHUNK_SIZE:
                return bytearray()
            chunks.append(bytes(buffer))
            buffer.clear()
        # Open whole chunks straight from the caller's buffer; keep only a partial one.
        count = len(view) // ENCRYPTED_CHUNK_SIZE
        chunks += (
            view[i * ENCRYPTED_CHUNK_SIZE : (i + 1) * ENCRYPTED_CHUNK_SIZE] for i in range(count)
        )
        rest = view[count * ENCRYPTED_CHUNK_SIZE :]
        out = bytearray(len(chunks) * CHUNK_SIZE)
        opened = 0
        try:
            for chunk in chunks:
                self._open_full(chunk, out, opened)
                opened += CHUNK_SIZE
            if rest and self._last_seen:
                raise PayloadAuthError("age payload: data after the final chunk")
        except VerificationError as exc:
            del out[opened:]
            if not opened:
                raise
            # Return what authenticated, as a reader returns data first; the next call raises.
            self._error = exc
            return out
        buffer += rest
        return out

    def _open_full(self, chunk: bytes | memoryview, out: bytearray, at: int) -> None:
        """Open a full-size chunk into ``out[at:]``: normally not the last, but a full final
        chunk is allowed."""
        if self._last_seen:
            raise PayloadAuthError("age payload: data after the final chunk")
        with memoryview(out) as whole, whole[at : at + CHUNK_SIZE] as into:
            try:
                self._cipher_into(chunk, into, last=False)
            except InvalidTag:
                try:
                    self._cipher_into(chunk, into, last=True)
                except InvalidTag:
                    # decrypt_into wrote the chunk before its tag failed: wipe it, so that no
                    # object (the buffer, a frame an exception keeps) holds unauthenticated data.
                    into[:] = bytes(CHUNK_SIZE)
                    raise PayloadAuthError(
                        f"age payload: chunk {self._counter} fails authentication"
                    ) from None
                self._last_seen = True
        self._counter += 1

    def _open_final(self, chunk: bytes) -> bytes:
        if not chunk:
            if self._counter == 0:
                raise PayloadAuthError("age payload: no chunks after the nonce")
            raise PayloadAuthError("age payload: truncated, the final chunk is missing")
        if len(chunk) < TAG_SIZE:
            raise PayloadAuthError("age payload: final chunk is shorter than its tag")
        if len(chunk) == TAG_SIZE and self._counter > 0:
            raise PayloadAuthError("age payload: final chunk is empty")
        return self._open_or_fail(chunk, last=True)

    def _open_or_fail(self, chunk: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        try:
            return self._cipher_open(chunk, last=last)
        except InvalidTag:
            raise PayloadAuthError(
                f"age payload: chunk {self._counter} fails authentication"
            ) from None

    def _cipher_open(self, chunk: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        return self._opener().decrypt(_chunk_nonce(self._counter, last=last), chunk, None)

    def _cipher_into(
        self, chunk: bytes | bytearray | memoryview, into: memoryview, *, last: bool
    ) -> None:
        self._opener().decrypt_into(_chunk_nonce(self._counter, last=last), chunk, None, into)

    def _opener(self) -> ChaCha20Poly1305:
        if self._cipher is None:  # unreachable: chunks are only read after the nonce
            raise AgeHeaderError("age file ends before the payload nonce")
        return self._cipher


def encrypt(data: bytes, recipients: Sequence[Recipient]) -> bytes:
    encryptor = AgeEncryptor(recipients)
    return encryptor.update(data) + encryptor.finish()


def decrypt(data: bytes, identities: Sequence[Identity]) -> bytes:
    decryptor = AgeDecryptor(identities)
    return bytes(decryptor.update(data) + decryptor.finish())
