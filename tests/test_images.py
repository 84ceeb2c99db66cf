"""Images through a directory with the real engine: `airgap send IMAGE` then `airgap fetch`
gives the same image id; nothing that fails a check is ever loaded."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from airgap.client.engine import Engine
from airgap.shared import minisign
from airgap.shared.bundle import sign_manifest
from airgap.shared.manifest import Manifest
from tests.conftest import build_image, run_airgap

pytestmark = pytest.mark.docker


@pytest.fixture
def two_images(docker_client: Any) -> Iterator[list[Any]]:
    first = build_image(docker_client, "airgap-img:1")
    second = build_image(docker_client, "airgap-img:2", extra='LABEL v="2"\n')
    yield [first, second]
    for ref in ("airgap-img:1", "airgap-img:2"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


def _send(keydir: Path, drop: Path, *refs: str) -> str:
    sent = run_airgap(
        [
            "send",
            *refs,
            "--to",
            drop,
            "-R",
            keydir / "recipient.txt",
            "--sign-key",
            keydir / "signing.key",
            "--json",
        ]
    )
    assert sent.returncode == 0, sent.stderr
    return str(json.loads(sent.stdout)["id"])


def _fetch(keydir: Path, drop: Path, state: Path) -> Any:
    return run_airgap(
        [
            "fetch",
            "--from",
            drop,
            "-i",
            keydir / "identity.txt",
            "--trust",
            keydir / "signing.pub",
            "--state-dir",
            state,
        ]
    )


def _gone(client: Any, *refs: str) -> None:
    for ref in refs:
        client.images.remove(ref, force=True)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(ref)


def test_several_images_round_trip(
    docker_client: Any, two_images: list[Any], keydir: Path, tmp_path: Path
) -> None:
    ids = [image.id for image in two_images]
    bundle_id = _send(keydir, tmp_path / "drop", "airgap-img:1", "airgap-img:2")
    manifest = json.loads((tmp_path / "drop" / f"{bundle_id}.manifest.json").read_text())
    assert [i["id"] for i in manifest["content"]["images"]] == ids
    _gone(docker_client, "airgap-img:1", "airgap-img:2")
    fetched = _fetch(keydir, tmp_path / "drop", tmp_path / "state")
    assert fetched.returncode == 0, fetched.stderr
    assert [docker_client.images.get(r).id for r in ("airgap-img:1", "airgap-img:2")] == ids
    out = docker_client.containers.run("airgap-img:2", remove=True, network_mode="host")
    assert out.strip() == b"hi"


def test_tampered_image_bundle_is_never_loaded(
    docker_client: Any, two_images: list[Any], keydir: Path, tmp_path: Path
) -> None:
    bundle_id = _send(keydir, tmp_path / "drop", "airgap-img:1")
    _gone(docker_client, "airgap-img:1", "airgap-img:2")
    payload = tmp_path / "drop" / f"{bundle_id}.tar.zst.age"
    data = bytearray(payload.read_bytes())
    data[-3] ^= 0x40  # in the last segment
    payload.write_bytes(bytes(data))
    fetched = _fetch(keydir, tmp_path / "drop", tmp_path / "state")
    assert fetched.returncode == 3
    assert "does not match its signed sha256" in fetched.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("airgap-img:1")


def test_a_lying_manifest_never_completes_a_load(
    docker_client: Any, two_images: list[Any], keydir: Path, tmp_path: Path
) -> None:
    """Every segment verifies, but the signed plaintext hash is wrong: the engine is fed the
    whole archive but its last piece, so it loads nothing."""
    drop = tmp_path / "drop"
    bundle_id = _send(keydir, drop, "airgap-img:1")
    _gone(docker_client, "airgap-img:1", "airgap-img:2")
    manifest = Manifest.parse((drop / f"{bundle_id}.manifest.json").read_bytes())
    liar = replace(manifest, plaintext_sha256="0" * 64)
    key = minisign.SecretKey.parse((keydir / "signing.key").read_text())
    data, signature = sign_manifest(liar, key)
    (drop / f"{bundle_id}.manifest.json").write_bytes(data)
    (drop / f"{bundle_id}.manifest.json.minisig").write_text(signature)
    fetched = _fetch(keydir, drop, tmp_path / "state")
    assert fetched.returncode == 3 and "plaintext" in fetched.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("airgap-img:1")
    assert "imported.jsonl" not in [p.name for p in (tmp_path / "state").iterdir()]


def test_unknown_image_and_no_engine_are_clear_errors(keydir: Path, tmp_path: Path) -> None:
    unknown = run_airgap(
        [
            "send",
            "no-such-image:0",
            "--to",
            tmp_path / "drop",
            "--no-encrypt",
            "--sign-key",
            keydir / "signing.key",
        ]
    )
    assert unknown.returncode == 2 and "no image 'no-such-image:0'" in unknown.stderr
    down = run_airgap(
        [
            "send",
            "x:1",
            "--to",
            tmp_path / "drop",
            "--no-encrypt",
            "--sign-key",
            keydir / "signing.key",
        ],
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert down.returncode == 5 and "airgap: hint:" in down.stderr
    assert not (tmp_path / "drop").exists() or not list((tmp_path / "drop").iterdir())


def test_engine_describes_shared_images_once(docker_client: Any, two_images: list[Any]) -> None:
    engine = Engine(docker_client)
    entries = engine.describe(["airgap-img:1", "airgap-img:1", "airgap-img:2"])
    assert [e.refs for e in entries] == [("airgap-img:1",), ("airgap-img:2",)]
