"""Smoke test against each engine of the matrix: docker save -> bundle -> docker load."""

from __future__ import annotations

import io
from typing import Any

import docker
import pytest

from airgap.shared import age, minisign
from airgap.shared.bundle import (
    EncodeOptions,
    decode,
    encode,
    open_manifest,
    sign_manifest,
    verified_segments,
)
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import ImageEntry
from tests.conftest import DockerEngine

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]
TAG = "airgap-smoke:1"


def test_save_encode_decode_load_gives_the_same_image(
    docker_engine: DockerEngine, tiny_image: Any
) -> None:
    client = docker_engine.client
    identity, signer = age.X25519Identity.generate(), minisign.SecretKey.generate()
    encoder, payload_chunks = encode(
        tiny_image.save(named=TAG), EncodeOptions([identity.recipient], level=1)
    )
    payload = b"".join(payload_chunks)
    image_entry = ImageEntry(tiny_image.id, (TAG,), tuple(tiny_image.attrs["RootFS"]["Layers"]))
    manifest = encoder.manifest(new_bundle_id(), signer=signer.public_key, images=[image_entry])
    data, signature = sign_manifest(manifest, signer)

    client.images.remove(TAG, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(TAG)

    opened = open_manifest(data, signature.encode(), [signer.public_key])
    plaintext = decode(
        verified_segments(io.BytesIO(payload).readinto, opened.payload), opened, [identity]
    )
    loaded = client.images.load(b"".join(plaintext))
    assert [image.id for image in loaded] == [tiny_image.id]
    assert client.images.get(TAG).id == opened.images[0].id
    output = client.containers.run(TAG, remove=True, network_mode="host")
    assert output.strip() == b"hi"
