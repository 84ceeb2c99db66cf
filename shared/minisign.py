"""minisign keys and signatures, in pure Python.

This module reads and writes the key and signature files of minisign
(https://jedisct1.github.io/minisign/) so that bundles we sign verify with the ``minisign`` CLI,
and signatures and keys made by ``minisign`` work here. It creates only prehashed ("ED")
signatures; it also verifies legacy ("Ed") ones, as ``minisign -V`` does by default.

Parsing is stricter than minisign: exact line structure, one optional final newline, no CR or
NUL, canonical base64 of exact length and known algorithm ids, so that no two texts are accepted
for one key or signature.

The *untrusted* comment of a key or signature file is, by minisign's design, not covered by any
signature: anyone can change it. Only the *trusted* comment is authenticated.

This module never touches files, terminals or processes, never prompts for a passphrase (the
caller passes bytes or a callback), never puts key material in messages or reprs, and never
creates legacy signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airgap.shared.errors import (
    AirgapError,
    KeyFileError,
    SignatureError,
    UntrustedSignerError,
    UsageError,
)

SIG_ALG: Final = b"Ed"  # keys, and legacy signatures over the raw message
SIG_ALG_PREHASHED: Final = b"ED"  # signatures over BLAKE2b-512(message)
KDF_SCRYPT: Final = b"Sc"
KDF_NONE: Final = b"\0\0"
CHK_BLAKE2B: Final = b"B2"

# libsodium's crypto_pwhash_scryptsalsa208sha256_*_SENSITIVE: what `minisign -G` uses.
OPSLIMIT_SENSITIVE: Final = 33_554_432
MEMLIMIT_SENSITIVE: Final = 1_073_741_824

# The longest comments minisign 0.11 reads back: its fgets buffers are 1024 and 8192 bytes,
# holding the prefix, the text and the newline. Longer ones make `minisign -V` fail.
MAX_UNTRUSTED_COMMENT: Final = 1024 - 1 - len("untrusted comment: ") - 1
MAX_TRUSTED_COMMENT: Final = 8192 - 1 - len("trusted comment: ") - 1

DEFAULT_UNTRUSTED_COMMENT: Final = "signature from airgap secret key"

_UNTRUSTED_PREFIX: Final = b"untrusted comment: "
_TRUSTED_PREFIX: Final = b"trusted comment: "
# minisign writes this comment on every secret key, encrypted or not (`-G -W` included);
# secret scanners look for it, so we keep it.
_KEY_FILE_COMMENT: Final = "minisign encrypted secret key"

# Secret key file, 158 bytes: sig_alg 0:2, kdf_alg 2:4, chk_alg 4:6, kdf_salt 6:38,
# opslimit 38:46 and memlimit 46:54 (little-endian), then keynum_sk 54:158, the part scrypt
# encrypts: key_id 0:8, seed 8:40, public key 40:72, BLAKE2b-256 checksum 72:104.
_KEY_ID_LEN: Final = 8
_SEED_LEN: Final = 32
_PUBLIC_LEN: Final = 32
_SIG_LEN: Final = 64
_DIGEST_LEN: Final = 64
_SALT_LEN: Final = 32
_CHK_LEN: Final = 32
_KEYNUM_SK_LEN: Final = _KEY_ID_LEN + _SEED_LEN + _PUBLIC_LEN + _CHK_LEN  # 104
_PUBLIC_FILE_LEN: Final = 2 + _KEY_ID_LEN + _PUBLIC_LEN  # 42
_SECRET_FILE_LEN: Final = 6 + _SALT_LEN + 8 + 8 + _KEYNUM_SK_LEN  # 158
_SIG_LINE_LEN: Final = 2 + _KEY_ID_LEN + _SIG_LEN  # 74

# Python's hashlib.scrypt refuses maxmem above INT_MAX; minisign's default needs 1 GiB.
_MAX_SCRYPT_MEMORY: Final = 2**31 - 1
# Four times minisign's default work (N * p = 2**20), so a crafted key cannot hang us.
_MAX_SCRYPT_WORK: Final = 2**22
# minisign reads a passphrase with fgets into 1024 bytes and strips the newline.
_MAX_PASSPHRASE: Final = 1022


_P: Final = 2**255 - 19
#: The y coordinates of the eight points of small order on edwards25519 (libsodium's
#: blocklist, whatever the sign of x): OpenSSL's Ed25519 takes such a public key, and with it
#: a signature over any message; libsodium, so minisign, refuses it.
_SMALL_ORDER_Y: Final = frozenset(
    {
        0,
        1,
        _P - 1,
        2707385501144840649318225287225658788936804267575313519463743609750303402022,
        55188659117513257062467267217118295137698188065244968500265048394206261417927,
    }
)


def _usable_point(key: bytes) -> bool:
    """An Ed25519 public key libsodium would verify with: y canonical, not of small order."""
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    return y < _P and y not in _SMALL_ORDER_Y


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key and the random 8-byte id minisign tags it with."""

    key_id: bytes
    key: bytes

    def __post_init__(self) -> None:
        _require_len(self.key_id, _KEY_ID_LEN, "public key id", KeyFileError)
        _require_len(self.key, _PUBLIC_LEN, "public key", KeyFileError)
        if not _usable_point(self.key):
            raise KeyFileError(
                "public key: not a usable Ed25519 key (a point of small order, or an encoding "
                "that is not canonical): it would take signatures over anything"
            )

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Read a ``.pub`` file, or its base64 line alone (what ``minisign -P`` takes).

        The comment line is not authenticated and is ignored beyond its prefix.
        """
        data = _to_bytes(text, KeyFileError, "public key")
        lines = _split_lines(data, (1, 2), KeyFileError, "public key")
        if len(lines) == 2:
            _strip_prefix(lines[0], _UNTRUSTED_PREFIX, KeyFileError, "public key comment")
        raw = _b64decode(lines[-1], _PUBLIC_FILE_LEN, KeyFileError, "public key")
        _require_alg(raw[:2], (SIG_ALG,), KeyFileError, "public key")
        return cls(key_id=raw[2:10], key=raw[10:])

    def encode(self) -> str:
        """The ``.pub`` file text, byte for byte as ``minisign -G`` (0.12 and later) writes it.

        minisign 0.11 wrote the key id in the comment without leading zeros; nothing reads it.
        """
        line = _b64encode(SIG_ALG + self.key_id + self.key)
        return f"untrusted comment: minisign public key {self.key_id_hex}\n{line}\n"

    @property
    def key_id_hex(self) -> str:
        """The key id as minisign prints it: the id read as a little-endian uint64, ``%016X``.

        minisign 0.11 prints ``%lX``, without leading zeros; compare ids as numbers or bytes.
        """
        return _key_id_hex(self.key_id)


@dataclass(frozen=True)
class SecretKey:
    """An Ed25519 seed and its key id. The seed is left out of the repr."""

    key_id: bytes
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _require_len(self.key_id, _KEY_ID_LEN, "secret key id", KeyFileError)
        _require_len(self.seed, _SEED_LEN, "secret key seed", KeyFileError)

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(key_id=secrets.token_bytes(_KEY_ID_LEN), seed=secrets.token_bytes(_SEED_LEN))

    @classmethod
    def parse(cls, text: str, *, passphrase: Callable[[], bytes] | None = None) -> SecretKey:
        """Read a minisign secret key file; ``passphrase`` is called only if it is encrypted."""
        data = _to_bytes(text, KeyFileError, "secret key")
        comment, line = _split_lines(data, (2,), KeyFileError, "secret key")
        _strip_prefix(comment, _UNTRUSTED_PREFIX, KeyFileError, "secret key comment")
        raw = _b64decode(line, _SECRET_FILE_LEN, KeyFileError, "secret key")
        _require_alg(raw[0:2], (SIG_ALG,), KeyFileError, "secret key signature")
        _require_alg(raw[2:4], (KDF_SCRYPT, KDF_NONE), KeyFileError, "secret key KDF")
        _require_alg(raw[4:6], (CHK_BLAKE2B,), KeyFileError, "secret key checksum")
        keynum_sk = raw[54:]
        if raw[2:4] == KDF_SCRYPT:
            keynum_sk = _decrypt(raw, passphrase)
        elif not _checksum_acceptable(keynum_sk):
            raise KeyFileError("secret key checksum does not match")
        return cls._from_keynum_sk(keynum_sk)

    @classmethod
    def _from_keynum_sk(cls, keynum_sk: bytes) -> SecretKey:
        key = cls(key_id=keynum_sk[:8], seed=keynum_sk[8:40])
        # libsodium stores seed || public key; a mismatch means a corrupt or forged file.
        if key.public_key.key != keynum_sk[40:72]:
            raise KeyFileError("secret key does not match the public key stored in it")
        return key

    def encode(
        self,
        *,
        passphrase: bytes | None = None,
        opslimit: int = OPSLIMIT_SENSITIVE,
        memlimit: int = MEMLIMIT_SENSITIVE,
    ) -> str:
        """The secret key file text.

        Without a passphrase: byte for byte what ``minisign -G -W`` writes (no KDF, zero salt,
        limits and checksum). With one: scrypt-encrypted as ``minisign -G`` does.
        """
        secret = self.seed + self.public_key.key
        if passphrase is None:
            header = SIG_ALG + KDF_NONE + CHK_BLAKE2B + bytes(_SALT_LEN + 16)
            body = self.key_id + secret + bytes(_CHK_LEN)
        else:
            _check_passphrase(passphrase)
            salt = secrets.token_bytes(_SALT_LEN)
            header = SIG_ALG + KDF_SCRYPT + CHK_BLAKE2B + salt
            header += _le64(opslimit) + _le64(memlimit)
            plain = self.key_id + secret + _checksum(self.key_id, secret)
            stream = _scrypt(passphrase, salt, opslimit, memlimit, UsageError)
            body = _xor(plain, stream)
        return f"untrusted comment: {_KEY_FILE_COMMENT}\n{_b64encode(header + body)}\n"

    @property
    def public_key(self) -> PublicKey:
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        return PublicKey(key_id=self.key_id, key=private.public_key().public_bytes_raw())


@dataclass(frozen=True)
class Signature:
    """A parsed ``.minisig`` file. ``untrusted_comment`` is NOT authenticated by anything."""

    key_id: bytes
    algorithm: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str

    @classmethod
    def parse(cls, text: str | bytes) -> Signature:
        data = _to_bytes(text, SignatureError, "signature")
        untrusted, line, trusted, global_line = _split_lines(
            data, (4,), SignatureError, "signature"
        )
        raw = _b64decode(line, _SIG_LINE_LEN, SignatureError, "signature")
        _require_alg(raw[:2], (SIG_ALG_PREHASHED, SIG_ALG), SignatureError, "signature")
        return cls(
            key_id=raw[2:10],
            algorithm=raw[:2],
            signature=raw[10:],
            trusted_comment=_parse_comment(trusted, _TRUSTED_PREFIX, MAX_TRUSTED_COMMENT),
            global_signature=_b64decode(global_line, _SIG_LEN, SignatureError, "global signature"),
            untrusted_comment=_parse_comment(untrusted, _UNTRUSTED_PREFIX, MAX_UNTRUSTED_COMMENT),
        )

    def encode(self) -> str:
        """The ``.minisig`` text, laid out exactly as ``minisign -S`` writes it."""
        line = _b64encode(self.algorithm + self.key_id + self.signature)
        return (
            f"untrusted comment: {self.untrusted_comment}\n{line}\n"
            f"trusted comment: {self.trusted_comment}\n{_b64encode(self.global_signature)}\n"
        )

    @property
    def key_id_hex(self) -> str:
        return _key_id_hex(self.key_id)


def prehash(chunks: Iterable[bytes]) -> bytes:
    """BLAKE2b-512 of the concatenated chunks: what an "ED" signature signs."""
    state = hashlib.blake2b(digest_size=_DIGEST_LEN)
    for chunk in chunks:
        state.update(chunk)
    return state.digest()


def sign(
    key: SecretKey,
    message: bytes,
    *,
    trusted_comment: str,
    untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT,
) -> str:
    """Sign ``message``; return the ``.minisig`` file text."""
    return sign_prehashed(
        key,
        prehash([message]),
        trusted_comment=trusted_comment,
        untrusted_comment=untrusted_comment,
    )


def sign_prehashed(
    key: SecretKey,
    digest: bytes,
    *,
    trusted_comment: str,
    untrusted_comment: str = DEFAULT_UNTRUSTED_COMMENT,
) -> str:
    """Sign a message given its :func:`prehash` digest, for files too big to hold in memory."""
    _require_len(digest, _DIGEST_LEN, "BLAKE2b-512 digest", UsageError)
    trusted = _check_comment(trusted_comment, MAX_TRUSTED_COMMENT, "trusted comment")
    _check_comment(untrusted_comment, MAX_UNTRUSTED_COMMENT, "untrusted comment")
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    signature = private.sign(digest)
    return Signature(
        key_id=key.key_id,
        algorithm=SIG_ALG_PREHASHED,
        signature=signature,
        trusted_comment=trusted_comment,
        global_signature=private.sign(signature + trusted),
        untrusted_comment=untrusted_comment,
    ).encode()


def verify(trusted: Sequence[PublicKey], message: bytes, signature_text: str | bytes) -> Signature:
    """Check a signature of ``message`` by one of the ``trusted`` keys; return it parsed.

    Raises SignatureError if it is malformed or does not verify, UntrustedSignerError if it is
    well formed but names a key id we do not trust.
    """
    parsed = Signature.parse(signature_text)
    signed = prehash([message]) if parsed.algorithm == SIG_ALG_PREHASHED else message
    return _verify_parsed(trusted, parsed, signed)


def verify_prehashed(
    trusted: Sequence[PublicKey], digest: bytes, signature_text: str | bytes
) -> Signature:
    """Like :func:`verify`, given the :func:`prehash` digest; refuses legacy signatures."""
    _require_len(digest, _DIGEST_LEN, "BLAKE2b-512 digest", UsageError)
    parsed = Signature.parse(signature_text)
    if parsed.algorithm != SIG_ALG_PREHASHED:
        raise SignatureError(
            "legacy (not prehashed) signature", hint="verify it with the whole message"
        )
    return _verify_parsed(trusted, parsed, digest)


def signed_comment(trusted: Sequence[PublicKey], signature_text: str | bytes) -> Signature:
    """The signature parsed, its trusted comment verified by one of the ``trusted`` keys. The
    global signature covers the signature and its comment, not the message: a caller can check
    what the comment names before it reads a message of any size.

    Raises SignatureError if it is malformed or its comment does not verify,
    UntrustedSignerError if no trusted key has its id.
    """
    parsed = Signature.parse(signature_text)
    if any(_comment_verifies(key, parsed) for key in _candidates(trusted, parsed)):
        return parsed
    raise SignatureError("trusted comment signature does not verify")


def _candidates(trusted: Sequence[PublicKey], parsed: Signature) -> list[PublicKey]:
    candidates = [key for key in trusted if key.key_id == parsed.key_id]
    if not candidates:
        known = ", ".join(sorted({key.key_id_hex for key in trusted})) or "none"
        raise UntrustedSignerError(
            f"signed by key {parsed.key_id_hex}, which is not trusted",
            hint=f"keys trusted here: {known}; if {parsed.key_id_hex} is the sender's, give "
            "its signing.pub with --trust (brought across by hand, never from the drop box)",
        )
    return candidates


def _verify_parsed(trusted: Sequence[PublicKey], parsed: Signature, signed: bytes) -> Signature:
    why = ""
    # Key ids are random, not unique: try every trusted key that carries this one. What failed
    # is kept as text, not as an exception: its traceback would hold every caller's frame, the
    # message they read included, for as long as the error is kept.
    for key in _candidates(trusted, parsed):
        why = _failed_check(key, parsed, signed)
        if not why:
            return parsed
    raise SignatureError(why)


def _failed_check(key: PublicKey, parsed: Signature, signed: bytes) -> str:
    """Which of the two signatures ``key`` does not verify, or "" if both verify."""
    if not _verifies(key, parsed.signature, signed):
        return "signature does not match the message"
    if not _comment_verifies(key, parsed):
        return "trusted comment signature does not verify"
    return ""


def _verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key.key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _comment_verifies(key: PublicKey, parsed: Signature) -> bool:
    """The global signature: over the signature and the trusted comment."""
    return _verifies(
        key, parsed.global_signature, parsed.signature + parsed.trusted_comment.encode()
    )


def _decrypt(raw: bytes, passphrase: Callable[[], bytes] | None) -> bytes:
    if passphrase is None:
        raise KeyFileError("secret key is encrypted and no passphrase was given")
    salt, opslimit, memlimit = raw[6:38], raw[38:46], raw[46:54]
    stream = _scrypt(
        passphrase(),
        salt,
        int.from_bytes(opslimit, "little"),
        int.from_bytes(memlimit, "little"),
        KeyFileError,
    )
    keynum_sk = _xor(raw[54:], stream)
    if keynum_sk[72:] != _checksum(keynum_sk[:8], keynum_sk[8:72]):
        raise KeyFileError("wrong passphrase, or the secret key is corrupt")
    return keynum_sk


def _checksum_acceptable(keynum_sk: bytes) -> bool:
    # `minisign -G -W` leaves the checksum zero; `minisign -C -W` keeps the real one.
    chk = keynum_sk[72:]
    return chk == bytes(_CHK_LEN) or chk == _checksum(keynum_sk[:8], keynum_sk[8:72])


def _checksum(key_id: bytes, secret: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + key_id + secret, digest_size=_CHK_LEN).digest()


def _scrypt(
    passphrase: bytes, salt: bytes, opslimit: int, memlimit: int, error: type[AirgapError]
) -> bytes:
    """libsodium's crypto_pwhash_scryptsalsa208sha256, 104 bytes long."""
    n_log2, r, p = _pick_params(opslimit, memlimit)
    n = 1 << n_log2
    # OpenSSL counts the V array (N + 2 blocks) and the p B blocks against maxmem.
    memory = 128 * r * (n + 2 + p)
    if p == 0 or memory > _MAX_SCRYPT_MEMORY or n * p > _MAX_SCRYPT_WORK:
        raise error("scrypt limits of the secret key are out of the supported range")
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=memory, dklen=104)


def _pick_params(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """libsodium's pickparams(), ported branch for branch: (N_log2, r, p) from the limits."""
    opslimit = max(opslimit, 32768)
    r = 8
    if opslimit < memlimit // 32:
        return _n_log2(opslimit // (r * 4)), r, 1
    n_log2 = _n_log2(memlimit // (r * 128))
    max_rp = min((opslimit // 4) // (1 << n_log2), 0x3FFFFFFF)
    return n_log2, r, max_rp // r


def _n_log2(max_n: int) -> int:
    # The smallest N_log2 in [1, 63] with 2**N_log2 > max_n / 2, else 63, as libsodium loops.
    n_log2 = 1
    while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
        n_log2 += 1
    return n_log2


def _check_passphrase(passphrase: bytes) -> None:
    # minisign reads one line of at most 1022 bytes and uses it up to the first NUL.
    if not passphrase:
        raise UsageError("empty passphrase", hint="encode without a passphrase instead")
    if len(passphrase) > _MAX_PASSPHRASE or any(c in passphrase for c in b"\r\n\0"):
        raise UsageError("minisign could not read this passphrase (too long, CR, LF or NUL)")


def _check_comment(comment: str, limit: int, what: str) -> bytes:
    encoded = _to_bytes(comment, UsageError, what)
    if any(c in encoded for c in b"\r\n\0"):
        raise UsageError(f"{what} must be one line without CR, LF or NUL")
    if len(encoded) > limit:
        raise UsageError(f"{what} is {len(encoded)} bytes; minisign reads at most {limit}")
    return encoded


def _parse_comment(line: bytes, prefix: bytes, limit: int) -> str:
    text = _strip_prefix(line, prefix, SignatureError, "signature comment")
    if len(text) > limit:
        raise SignatureError(f"signature comment longer than minisign reads ({limit} bytes)")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureError("signature comment is not UTF-8") from exc


def _split_lines(
    data: bytes, counts: tuple[int, ...], error: type[AirgapError], what: str
) -> list[bytes]:
    # minisign writes a final newline; we also accept a file that lost it, nothing else.
    if b"\r" in data or b"\0" in data:
        raise error(f"{what} contains CR or NUL")
    lines = data.removesuffix(b"\n").split(b"\n")
    if len(lines) not in counts:
        raise error(f"{what} has {len(lines)} lines, expected {' or '.join(map(str, counts))}")
    return lines


def _strip_prefix(line: bytes, prefix: bytes, error: type[AirgapError], what: str) -> bytes:
    if not line.startswith(prefix):
        raise error(f"{what} does not start with {prefix.decode()!r}")
    return line.removeprefix(prefix)


def holds_secret_key(text: str) -> bool:
    """Whether ``text`` looks like a secret key file whatever its comment line says (rsign2's,
    or one edited by hand): its key line is the base64 of a secret key file's bytes. Nothing
    is checked beyond that: :meth:`SecretKey.parse` does."""
    lines = text.encode("utf-8", "replace").splitlines()
    try:
        raw = _b64decode(lines[1].strip(), _SECRET_FILE_LEN, KeyFileError, "secret key")
    except (IndexError, AirgapError):
        return False
    return raw[:2] == SIG_ALG


def _b64decode(line: bytes, length: int, error: type[AirgapError], what: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except binascii.Error as exc:
        raise error(f"{what} is not valid base64") from exc
    # Refuse non-canonical padding bits, so one key or signature has exactly one text.
    if base64.b64encode(raw) != line:
        raise error(f"{what} is not canonical base64")
    if len(raw) != length:
        raise error(f"{what} is {len(raw)} bytes, expected {length}")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _require_alg(alg: bytes, known: tuple[bytes, ...], error: type[AirgapError], what: str) -> None:
    if alg not in known:
        raise error(f"unsupported {what} algorithm {alg!r}")


def _require_len(value: bytes, length: int, what: str, error: type[AirgapError]) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise error(f"{what} must be {length} bytes")


def _to_bytes(text: str | bytes, error: type[AirgapError], what: str) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid text") from exc


def _key_id_hex(key_id: bytes) -> str:
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _le64(value: int) -> bytes:
    if not 0 <= value < 2**64:
        raise UsageError("scrypt limits must fit in 64 bits")
    return value.to_bytes(8, "little")


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))
