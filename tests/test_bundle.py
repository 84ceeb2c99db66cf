"""Bundle encode/decode with bytes alone: round trips at chunk and segment boundaries."""

from __future__ import annotations

import io
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared import age, minisign
from airgap.shared.bundle import (
    PIECE,
    EncodeOptions,
    decode,
    encode,
    open_manifest,
    sign_manifest,
    verified_segments,
)
from airgap.shared.errors import (
    NoIdentityMatchError,
    PayloadSizeError,
    PlaintextHashError,
    SegmentHashError,
    SignatureError,
    UntrustedSignerError,
)
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import MIN_SEGMENT, Manifest

IDENTITY = age.X25519Identity.generate()
SIGNER = minisign.SecretKey.generate()
CHUNK = age.CHUNK_SIZE
SEG = MIN_SEGMENT
BOUNDARY_SIZES = sorted(
    {n + d for n in (0, CHUNK, 2 * CHUNK, SEG, 3 * SEG) for d in (-1, 0, 1) if n + d >= 0}
)


def _bundle(
    plaintext: bytes, *, encrypted: bool = True, pieces: int = 3, segment_size: int = SEG
) -> tuple[Manifest, bytes, bytes, str]:
    recipients = [IDENTITY.recipient] if encrypted else []
    options = EncodeOptions(recipients, level=1, segment_size=segment_size)
    step = max(1, len(plaintext) // pieces)
    chunks = [plaintext[i : i + step] for i in range(0, len(plaintext), step)]
    encoder, out = encode(chunks, options)
    payload = b"".join(out)
    manifest = encoder.manifest(new_bundle_id(), signer=SIGNER.public_key)
    data, signature = sign_manifest(manifest, SIGNER)
    return manifest, payload, data, signature


def _decode(manifest: Manifest, payload: bytes, identities: list[age.Identity]) -> bytes:
    segments = verified_segments(io.BytesIO(payload).readinto, manifest.payload)
    return b"".join(decode(segments, manifest, identities))


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
@pytest.mark.parametrize("encrypted", [True, False])
def test_round_trip_at_chunk_and_segment_boundaries(size: int, encrypted: bool) -> None:
    plaintext = os.urandom(size)
    manifest, payload, data, signature = _bundle(plaintext, encrypted=encrypted)
    opened = open_manifest(data, signature.encode(), [SIGNER.public_key])
    assert opened == manifest
    assert manifest.payload.size == len(payload)
    assert len(manifest.payload.segments) == -(-len(payload) // SEG)
    assert _decode(opened, payload, [IDENTITY]) == plaintext


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=5 * SEG), st.integers(min_value=1, max_value=7))
def test_round_trip_any_size_any_split(plaintext: bytes, pieces: int) -> None:
    manifest, payload, _, _ = _bundle(plaintext, pieces=pieces)
    assert _decode(manifest, payload, [IDENTITY]) == plaintext


@pytest.mark.parametrize("encrypted", [True, False])
def test_segments_larger_than_a_piece(encrypted: bool) -> None:
    # Segments are read and hashed a piece at a time; the last piece of a segment is shorter.
    segment = PIECE + PIECE // 2
    plaintext = os.urandom(4 * PIECE)  # incompressible: the payload spans three segments
    manifest, payload, _, _ = _bundle(plaintext, encrypted=encrypted, segment_size=segment)
    assert len(manifest.payload.segments) == 3
    assert _decode(manifest, payload, [IDENTITY]) == plaintext
    bad = bytearray(payload)
    bad[segment + PIECE + 5] ^= 1  # the second, shorter piece of segment 1
    with pytest.raises(SegmentHashError, match="segment 1"):
        _decode(manifest, bytes(bad), [IDENTITY])


@pytest.mark.parametrize("encrypted", [True, False])
def test_decode_takes_the_payload_in_chunks_of_any_size(encrypted: bool) -> None:
    plaintext = os.urandom(3 * PIECE)
    manifest, payload, _, _ = _bundle(plaintext, encrypted=encrypted)
    assert b"".join(decode([payload], manifest, [IDENTITY])) == plaintext
    pieces = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    assert b"".join(decode(pieces, manifest, [IDENTITY])) == plaintext


def test_closing_decode_early_stops_its_threads() -> None:
    manifest, payload, _, _ = _bundle(os.urandom(3 * PIECE))
    before = threading.active_count()
    chunks = decode([payload], manifest, [IDENTITY])
    assert next(chunks)
    chunks.close()
    assert threading.active_count() == before


def test_segments_are_checked_before_decryption() -> None:
    manifest, payload, _, _ = _bundle(os.urandom(3 * SEG))
    bad = bytearray(payload)
    bad[2 * SEG + 5] ^= 1
    released = []
    with pytest.raises(SegmentHashError, match="segment 2") as caught:
        segments = verified_segments(io.BytesIO(bytes(bad)).readinto, manifest.payload)
        for piece in decode(segments, manifest, [IDENTITY]):
            released.append(piece)
    assert caught.value.segment == 2
    # nothing of the bad segment was decrypted: at most the first two segments' plaintext
    assert sum(map(len, released)) <= 2 * SEG


def test_wrong_identity_and_wrong_sizes() -> None:
    manifest, payload, _, _ = _bundle(os.urandom(1000))
    with pytest.raises(NoIdentityMatchError):
        _decode(manifest, payload, [age.X25519Identity.generate()])
    with pytest.raises(PayloadSizeError, match="shorter"):
        _decode(manifest, payload[:-1], [IDENTITY])
    with pytest.raises(PayloadSizeError, match="longer"):
        _decode(manifest, payload + b"\0", [IDENTITY])


def test_plaintext_hash_is_checked_at_the_end() -> None:
    # A manifest whose plaintext hash is wrong (signed by a sender who lied or erred).
    manifest, payload, _, _ = _bundle(b"hello" * 1000)
    from dataclasses import replace

    liar = replace(manifest, plaintext_sha256="0" * 64)
    with pytest.raises(PlaintextHashError):
        _decode(liar, payload, [IDENTITY])
    short = replace(manifest, plaintext_size=manifest.plaintext_size - 1)
    with pytest.raises(PlaintextHashError, match="longer"):
        _decode(short, payload, [IDENTITY])


def test_signature_must_be_trusted_and_name_the_bundle() -> None:
    _, _, data, signature = _bundle(b"x")
    with pytest.raises(UntrustedSignerError):
        open_manifest(data, signature.encode(), [minisign.SecretKey.generate().public_key])
    # A valid signature by the trusted key, but over another bundle's trusted comment.
    other = minisign.sign(SIGNER, data, trusted_comment="airgap-bundle/1 id=X payload-sha256=Y")
    with pytest.raises(SignatureError, match="trusted comment"):
        open_manifest(data, other.encode(), [SIGNER.public_key])
