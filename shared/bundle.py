"""A bundle end to end: plaintext chunks in, payload bytes and a signed manifest out, and back.

Encoding composes the stages in one place: plaintext sha256 -> zstd -> age -> payload sha256 and
segment hashes. Decoding checks in a fixed order and releases nothing early: signature by a
trusted key (and a trusted comment naming this very bundle), the manifest, then each payload
segment against its signed hash before a byte of it is decrypted, then age, zstd, and finally
the plaintext size and sha256. This module sees bytes and callables only: the transports, the
disk and Docker belong to the client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

from airgap.shared import age, minisign
from airgap.shared.errors import (
    PayloadSizeError,
    PlaintextHashError,
    SegmentHashError,
    SignatureError,
    UsageError,
)
from airgap.shared.manifest import (
    DEFAULT_SEGMENT,
    Encryption,
    FileEntry,
    ImageEntry,
    Manifest,
    Payload,
    names_bundle,
    payload_name,
)
from airgap.shared.pipeline import threaded
from airgap.shared.stages import (
    DEFAULT_ZSTD_LEVEL,
    Chain,
    Limit,
    Pace,
    Segments,
    Sha256,
    Stage,
    ZstdCompress,
    rechunk,
    run,
    views,
    zstd_decompress,
)
from airgap.shared.version import __version__

#: Pieces no larger than this go through the stages, so no stage ever holds much.
PIECE = 1024 * 1024


@dataclass(frozen=True)
class EncodeOptions:
    recipients: Sequence[age.Recipient]  # empty: sign-only bundle, no encryption
    level: int = DEFAULT_ZSTD_LEVEL  # with ``pace``, the first level
    pace: Pace | None = None  # changes the level as it goes (see ZstdCompress)
    threads: int = 0
    segment_size: int = DEFAULT_SEGMENT
    key: age.PayloadKey | None = None  # a given key repeats an earlier encoding exactly


class Encoder:
    """plaintext -> payload, as a stage; after :meth:`finish` it knows every hash."""

    def __init__(self, options: EncodeOptions) -> None:
        self.options = options
        self.plaintext = Sha256()
        self.payload = Sha256()
        self.segments = Segments(options.segment_size)
        # Two groups, each hashing what it has just read or made, while it is still in the
        # core's cache: the plaintext beside the zstd call (whose workers compress on their own
        # threads), then encryption beside the payload hashes.
        self.zstd = ZstdCompress(level=options.level, threads=options.threads, pace=options.pace)
        self.stages: list[Stage] = [Chain([self.plaintext, self.zstd])]
        encrypted: list[Stage] = (
            [age.AgeEncryptor(options.recipients, key=options.key)] if options.recipients else []
        )
        self.stages.append(Chain([*encrypted, self.payload, self.segments]))
        self._chain = Chain(self.stages)

    def update(self, data: bytes) -> bytes:
        return self._chain.update(data)

    def finish(self) -> bytes:
        return self._chain.finish()

    def manifest(
        self,
        bundle_id: str,
        *,
        signer: minisign.PublicKey,
        files: Sequence[FileEntry] = (),
        images: Sequence[ImageEntry] = (),
        created: float | None = None,
    ) -> Manifest:
        recipients = self.options.recipients
        encryption = (
            Encryption(
                "age-v1",
                tuple(r.encode() for r in recipients if isinstance(r, age.X25519Recipient)),
                passphrase=any(isinstance(r, age.ScryptRecipient) for r in recipients),
            )
            if recipients
            else Encryption("none")
        )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        return Manifest(
            id=bundle_id,
            created=stamp,
            tool=f"airgap-ftp/{__version__}",
            signer=signer.key_id_hex,
            plaintext_size=self.plaintext.size,
            plaintext_sha256=self.plaintext.hexdigest(),
            compression_level=self.zstd.highest,
            encryption=encryption,
            payload=Payload(
                name=payload_name(bundle_id, encrypted=bool(recipients)),
                size=self.payload.size,
                sha256=self.payload.hexdigest(),
                segment_size=self.options.segment_size,
                segments=tuple(self.segments.digests),
            ),
            files=tuple(files),
            images=tuple(images),
        )


def encode(chunks: Iterable[bytes], options: EncodeOptions) -> tuple[Encoder, Iterator[bytes]]:
    """Return the encoder (for its hashes once drained) and the payload chunks it yields.

    The first group of stages runs on the thread that reads the plaintext, the second on its
    own (see :mod:`airgap.shared.pipeline`), and the caller writes the payload.
    """
    encoder = Encoder(options)
    first, *rest = encoder.stages
    return encoder, threaded(run(rechunk(chunks, PIECE), first), rest)


def sign_manifest(manifest: Manifest, key: minisign.SecretKey) -> tuple[bytes, str]:
    """The manifest's bytes and the text of its ``.minisig``."""
    data = manifest.to_bytes()
    signature = minisign.sign(
        key,
        data,
        trusted_comment=manifest.trusted_comment(),
        untrusted_comment=f"airgap bundle {manifest.id} signed by {key.public_key.key_id_hex}",
    )
    return data, signature


def check_names(bundle_id: str, signature: bytes, trusted: Sequence[minisign.PublicKey]) -> None:
    """Before the manifest is read: the signature's trusted comment, verified on its own, must
    name ``bundle_id``. A signature copied beside another bundle's name is refused unread, so a
    source makes a receiver read at most one manifest for each bundle a trusted key signed."""
    sig = minisign.signed_comment(trusted, signature)
    if not names_bundle(sig.trusted_comment, bundle_id):
        raise SignatureError(
            "signature: signed for another bundle",
            hint="a signature file copied or renamed from another bundle",
        )


def open_manifest(data: bytes, signature: bytes, trusted: Sequence[minisign.PublicKey]) -> Manifest:
    """Verify the signature first; only a manifest a trusted key signed is parsed at all."""
    sig = minisign.verify(trusted, data, signature)
    if sig.algorithm != minisign.SIG_ALG_PREHASHED:
        raise SignatureError("signature: not a prehashed (ED) minisign signature")
    manifest = Manifest.parse(data)
    if sig.trusted_comment != manifest.trusted_comment():
        raise SignatureError("signature: trusted comment does not name this bundle")
    if manifest.signer != sig.key_id_hex:
        raise SignatureError("signature: manifest names another signer than the signature")
    return manifest


def verified_segments(
    readinto: Callable[[memoryview], int | None], payload: Payload
) -> Iterator[memoryview]:
    """Read the payload a segment at a time; yield a segment, in pieces, only after its hash
    matched. One segment buffer is reused, so memory stays at one segment whatever the size,
    and a piece is a view of it: good until the next piece is asked for, and copied by a
    consumer that keeps it longer.

    Each piece is hashed as soon as it is read, while it is still in the core's cache. The
    signed segment hashes cover every byte of the payload exactly once (the manifest checks
    that they cover its size), so the whole-payload sha256, kept for ``sha256sum -c`` by hand,
    is not computed again here.
    """
    buffer = memoryview(bytearray(min(payload.segment_size, max(payload.size, 1))))
    for index, expected in enumerate(payload.segments):
        want = min(payload.segment_size, payload.size - index * payload.segment_size)
        pieces = [buffer[start : min(start + PIECE, want)] for start in range(0, want, PIECE)]
        digest = hashlib.sha256()
        for piece in pieces:
            if _fill(readinto, piece) != len(piece):
                raise PayloadSizeError("payload: shorter than the manifest says")
            digest.update(piece)
        if digest.hexdigest() != expected:
            raise SegmentHashError(
                f"payload: segment {index} does not match its signed sha256", segment=index
            )
        yield from pieces
    if _fill(readinto, buffer[:1]):
        raise PayloadSizeError("payload: longer than the manifest says")


#: Bytes each link of the decoding threads holds: see :func:`decode`.
DECODE_LINK = 16 << 20


def decode(
    segments: Iterable[bytes | memoryview],
    manifest: Manifest,
    identities: Sequence[age.Identity],
) -> Generator[bytes, None, None]:
    """Yield plaintext chunks; raise after the last one unless size and sha256 match.
    A piece of ``segments`` need only stay good until the next one is asked for.

    Decryption runs on the thread that reads and verifies the segments, decompression on its
    own, and the plaintext is counted and hashed on the caller's thread as it is handed over.
    """
    plaintext = Sha256()
    check = Chain([Limit(manifest.plaintext_size, PlaintextHashError, "plaintext"), plaintext])
    pieces = views(segments, PIECE)  # not copies: a copy of the payload costs as much as a hash
    if manifest.encryption.scheme == "none":
        # Decompressed on another thread: a piece must outlive the reading of the next one.
        payload: Iterable[bytes | bytearray] = map(bytes, pieces)
    else:
        if manifest.encryption.passphrase and not any(
            isinstance(i, age.ScryptIdentity) for i in identities
        ):  # an identity (a configured one, say) cannot open it: say what can
            raise UsageError(
                "the bundle is encrypted to a passphrase, and none was given",
                hint="set AIRGAP_PASSPHRASE",
            )
        if not identities:
            raise UsageError(
                "the bundle is encrypted and there is no identity to decrypt it",
                hint="pass --identity identity.txt",
            )
        payload = run(pieces, age.AgeDecryptor(identities))
    # Three busy threads on two cores: links of 16 MiB, not 4, ride out a thread's wait for a
    # core (decode of 1 GiB 1.63 s -> 1.46 s, median of six, for 24 MB more memory).
    with closing(threaded(payload, [zstd_decompress], capacity=DECODE_LINK)) as chunks:
        for chunk in chunks:
            yield check.update(chunk)
    if (
        plaintext.size != manifest.plaintext_size
        or plaintext.hexdigest() != manifest.plaintext_sha256
    ):
        raise PlaintextHashError("plaintext: sha256 does not match the manifest")


def _fill(readinto: Callable[[memoryview], int | None], target: memoryview) -> int:
    filled = 0
    while filled < len(target):
        got = readinto(target[filled:])
        if not got:
            break
        filled += got
    return filled
