"""The public age test vectors (C2SP/CCTV) against our decryptor.

The vectors live beside the project in ``../shared/testvectors/age`` and are never copied here.
Each must give exactly its ``expect`` outcome, and the plaintext we released before failing
must hash to its ``payload``. Armored and post-quantum vectors are skipped: we implement neither.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from airgap.shared.age import AgeDecryptor, Identity, ScryptIdentity, X25519Identity
from airgap.shared.errors import (
    AgeHeaderError,
    HeaderMacError,
    NoIdentityMatchError,
    PayloadAuthError,
    VerificationError,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testvectors" / "age"

OUTCOMES: dict[str, type[VerificationError] | None] = {
    "success": None,
    "no match": NoIdentityMatchError,
    "HMAC failure": HeaderMacError,
    "header failure": AgeHeaderError,
    "payload failure": PayloadAuthError,
}


@dataclass(frozen=True)
class Vector:
    expect: str
    payload: str | None
    identities: tuple[str, ...]
    passphrases: tuple[str, ...]
    armored: bool
    age_file: bytes


def load_vector(path: Path) -> Vector:
    raw = path.read_bytes()
    head, _, age_file = raw.partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode("utf-8").splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        age_file = zlib.decompress(age_file)
    return Vector(
        expect=fields["expect"][0],
        payload=fields["payload"][0] if "payload" in fields else None,
        identities=tuple(fields.get("identity", [])),
        passphrases=tuple(fields.get("passphrase", [])),
        armored=fields.get("armored") == ["yes"],
        age_file=age_file,
    )


def skip_reason(vector: Vector) -> str | None:
    if vector.armored:
        return "armored vector: ASCII armor is not implemented"
    if any(not identity.startswith("AGE-SECRET-KEY-1") for identity in vector.identities):
        return "hybrid post-quantum identity: ML-KEM recipients are not implemented"
    return None


def vector_params() -> list[object]:
    if not VECTORS.is_dir():
        missing = pytest.mark.skip(reason=f"age test vectors not found at {VECTORS}")
        return [pytest.param(None, id="vectors-missing", marks=missing)]
    params: list[object] = []
    for path in sorted(VECTORS.iterdir()):
        reason = skip_reason(load_vector(path))
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


def identities_for(vector: Vector) -> list[Identity]:
    identities: list[Identity] = [X25519Identity.parse(text) for text in vector.identities]
    identities += [ScryptIdentity(text.encode("utf-8")) for text in vector.passphrases]
    # A vector without keys fails before any key is needed; the decryptor still wants one.
    return identities or [X25519Identity.generate()]


def decrypt_in_pieces(
    age_file: bytes, identities: list[Identity], piece: int
) -> tuple[bytes, VerificationError | None]:
    """Feed the file in pieces; return all plaintext released and the error that stopped it."""
    decryptor = AgeDecryptor(identities)
    released: list[bytes] = []
    try:
        for start in range(0, len(age_file), piece):
            released.append(decryptor.update(age_file[start : start + piece]))
        released.append(decryptor.finish())
    except VerificationError as exc:
        return b"".join(released), exc
    return b"".join(released), None


@pytest.mark.parametrize("piece", [1024, 0], ids=["1KiB-pieces", "all-at-once"])
@pytest.mark.parametrize("path", vector_params())
def test_vector(path: Path, piece: int) -> None:
    vector = load_vector(path)
    identities = identities_for(vector)
    released, error = decrypt_in_pieces(
        vector.age_file, identities, piece or len(vector.age_file) or 1
    )
    expected = OUTCOMES[vector.expect]
    if expected is None:
        assert error is None, f"expected success, got {error!r}"
    else:
        assert type(error) is expected, f"expected {expected.__name__}, got {error!r}"
    if vector.payload is not None:
        assert hashlib.sha256(released).hexdigest() == vector.payload


def test_vectors_cover_every_outcome() -> None:
    """Guards against a vector folder that silently lost the cases we run."""
    if not VECTORS.is_dir():
        pytest.skip(f"age test vectors not found at {VECTORS}")
    run = [load_vector(path) for path in VECTORS.iterdir()]
    outcomes = {vector.expect for vector in run if skip_reason(vector) is None}
    assert outcomes == set(OUTCOMES)
