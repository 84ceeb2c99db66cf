"""The bundle pipeline alone, as the codec benchmark runs it in a child process.

    python -m bench.pipeline encode PLAINTEXT DROP KEYDIR   # one bundle of the file's bytes
    python -m bench.pipeline decode DROP KEYDIR OUTPUT      # verify it, write the plaintext

The plaintext is the file's bytes themselves (as for an image, whose plaintext is what
`docker save` wrote), not a tar around it: this is what `zstd -1 -T0 | age -r` is compared with.
It uses the product's own modules: the directory transport, encode, sign, open, decode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from airgap.client.fetch import open_bundle, plaintext_of
from airgap.client.keyfiles import load_identities, load_recipients, load_trusted
from airgap.client.memory import keep_freed_pieces
from airgap.client.send import send_stream
from airgap.client.transport import DirectoryTransport, published_ids
from airgap.shared import minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.stages import DEFAULT_ZSTD_LEVEL


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


def encode_file(source: Path, drop: Path, keys: Path, level: int) -> None:
    recipients = load_recipients([], [keys / "recipient.txt"])
    key = minisign.SecretKey.parse((keys / "signing.key").read_text())
    options = EncodeOptions(recipients, level=level, threads=os.cpu_count() or 1)
    send_stream(_chunks(source), DirectoryTransport(drop), options=options, key=key)


def decode_bundle(drop: Path, keys: Path, output: Path) -> None:
    transport = DirectoryTransport(drop)
    (bundle_id,) = published_ids(transport.list())
    manifest, _ = open_bundle(transport, bundle_id, load_trusted([keys / "signing.pub"]))
    identities = load_identities([keys / "identity.txt"])
    # In place, not truncated first: the benchmark writes over the same file each run.
    with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
        for chunk in plaintext_of(transport, manifest, identities):
            out.write(chunk)
        out.truncate()


if __name__ == "__main__":
    keep_freed_pieces()  # as the CLI does
    if sys.argv[1] == "encode":
        level = int(sys.argv[5]) if len(sys.argv) > 5 else DEFAULT_ZSTD_LEVEL
        encode_file(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), level)
    else:
        decode_bundle(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
