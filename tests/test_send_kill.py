"""`airgap send` killed with SIGKILL at several points of an upload to the appliance, then
`airgap send --resume ID`: the bundle is published, `airgap fetch` loads the image with its id,
and the rerun sends at most the rest of the payload plus one segment (issue #4).

What was in flight when the sender died (handed to its socket, never written by the server) is
lost with the connection and cannot be seen from outside; the bound is therefore taken against
what the server held when the rerun began, once the killed session had ended there:

    payload - held  <=  re-sent payload bytes  <=  payload - held + one segment

The lower bound keeps the client's own count honest; the upper one fails for a rerun that starts
over, because every kill point lies past the first segment (held > one segment).

The appliance runs with ``--max-rate``, as a slow link does: the encoder finishes (payload and
signed manifest in the spool, which ``--resume`` needs) while the upload is still under way. Its
throttle lets the data through in bursts of about a second's worth, so each kill lands up to
one burst past its point; the payload is long enough for the last point to stay short of the end.
Without a limit the upload keeps pace with the encoder on loopback, and a kill lands before the
manifest is spooled: the rerun (the same command, or ``--resume`` with the signing key, since
the manifest is not signed yet) encodes again with the payload key the spool kept, compares the
spool's bytes and goes on from the server's size (the last test).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.conftest import build_image, receiving, run_airgap, spawn_airgap
from tests.server.conftest import Server, start_server
from tests.test_remote import _env, _fingerprint, _wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(90)]

MIB = 1 << 20
TAG = f"airgap-sendkill:{uuid.uuid4().hex[:12]}"  # unique: suites may run side by side
BLOB = 68 * MIB  # random, so the payload is as large: four 16 MiB segments and a bit
RATE = 16 * MIB  # bytes a second, each way: ~4.5 s for the whole payload
#: Kill once the server holds this many whole segments and a little more: early, mid, late.
POINTS = {"early": 1, "mid": 2, "late": 3}


@pytest.fixture(scope="module")
def blob(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("sendkill") / "blob.bin"
    path.write_bytes(os.urandom(BLOB))
    yield path
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(TAG, force=True)


@pytest.fixture
def image(docker_client: Any, blob: Path) -> Any:
    """The image, as the previous test's fetch loaded it back (built if it is not there)."""
    try:
        return docker_client.images.get(TAG)
    except docker.errors.ImageNotFound:
        return build_image(docker_client, TAG, extra="COPY blob.bin /blob.bin\n", files=[blob])


@contextlib.contextmanager
def _appliance(tmp_path: Path, keydir: Path, *extra: str) -> Iterator[Server]:
    signer = str(keydir / "signing.pub")
    server = start_server(
        tmp_path / "root", "--tls", "required", "--trusted-signer", signer, *extra
    )
    try:
        yield server
    finally:
        server.stop()


def _url(server: Server, user: str) -> list[str]:
    return [
        "--server",
        f"ftps://{user}@127.0.0.1:{server.port}/",
        "--tls-fingerprint",
        _fingerprint(server),
    ]


def _send_argv(server: Server, keydir: Path) -> list[str]:
    return [
        "send",
        TAG,
        *_url(server, "sender"),
        "-R",
        str(keydir / "recipient.txt"),
        "--sign-key",
        str(keydir / "signing.key"),
        "--json",
    ]


@contextlib.contextmanager
def _sending(server: Server, keydir: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`airgap send` of the image in the background, killed on the way out if still running."""
    send = spawn_airgap(_send_argv(server, keydir), env=_env(tmp_path, server.password("sender")))
    try:
        yield send
    finally:
        if send.poll() is None:
            send.kill()
        send.communicate(timeout=30)


def _bundle_id(tmp_path: Path) -> str:
    """The id of the one send under way: the name of its spool (as a user would find it)."""
    spools = tmp_path / "cache" / "airgap" / "send"
    _wait_for(lambda: spools.exists() and any(spools.iterdir()), "the send's spool")
    (spool,) = spools.iterdir()
    return spool.name


def _spooled_manifest(tmp_path: Path, bundle_id: str) -> Path:
    return tmp_path / "cache" / "airgap" / "send" / bundle_id / f"{bundle_id}.manifest.json"


def _held(server: Server, bundle_id: str) -> int:
    """The server's size of the partial payload (0 before it exists)."""
    partial = server.root / "pub" / "incoming" / "sender" / f"{bundle_id}.tar.zst.age.part"
    return partial.stat().st_size if partial.exists() else 0


def _kill(send: subprocess.Popen[bytes], server: Server, bundle_id: str) -> int:
    """SIGKILL the sender; return what the server held then. Waits until the killed session's
    upload has ended on the server (its audit line), so that nothing more arrives after."""
    send.send_signal(signal.SIGKILL)
    held = _held(server, bundle_id)
    send.communicate(timeout=30)
    ended = re.compile(rf'"event": "upload-(?:completed|incomplete)", "file": "[^"]*{bundle_id}')
    _wait_for(lambda: ended.search(server.audit()), "the server to end the killed upload")
    return held


def _resume(
    server: Server, bundle_id: str, tmp_path: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_airgap(
        ["send", "--resume", bundle_id, *_url(server, "sender"), "--json", *extra],
        env=_env(tmp_path, server.password("sender")),
    )


def _check_resent(server: Server, summary: dict[str, Any], held: int) -> None:
    """The rerun's payload bytes on the wire (its count, less the manifest and signature, which
    go up whole) against the bound above, once the bundle is published."""
    outgoing = server.root / "pub" / "outgoing"
    bundle_id, size = summary["id"], int(summary["payload_bytes"])
    signature = outgoing / f"{bundle_id}.manifest.json.minisig"
    _wait_for(signature.exists, "the resumed bundle to be published")
    manifest = outgoing / f"{bundle_id}.manifest.json"
    segment = int(json.loads(manifest.read_text())["payload"]["segment_size"])
    resent = int(summary["bytes_on_wire"]) - signature.stat().st_size - manifest.stat().st_size
    assert size - held <= resent <= size - held + segment, (size, held, resent)


def _fetch_and_check(
    server: Server, docker_client: Any, image: Any, keydir: Path, tmp_path: Path
) -> None:
    docker_client.images.remove(TAG, force=True)
    fetched = run_airgap(
        ["fetch", *_url(server, "receiver"), *receiving(keydir, tmp_path / "state")],
        env=_env(tmp_path, server.password("receiver")),
    )
    assert fetched.returncode == 0, fetched.stderr
    assert docker_client.images.get(TAG).id == image.id


@pytest.mark.parametrize("segments", list(POINTS.values()), ids=list(POINTS))
def test_send_killed_mid_upload_resumes_with_at_most_one_segment_resent(
    docker_client: Any, image: Any, keydir: Path, tmp_path: Path, segments: int
) -> None:
    with (
        _appliance(tmp_path, keydir, "--max-rate", str(RATE)) as server,
        _sending(server, keydir, tmp_path) as send,
    ):
        bundle_id = _bundle_id(tmp_path)
        spooled = _spooled_manifest(tmp_path, bundle_id)
        _wait_for(spooled.exists, "the payload to be encoded")
        payload = json.loads(spooled.read_text())["payload"]
        size, segment = int(payload["size"]), int(payload["segment_size"])
        assert size > 4 * segment
        point = segments * segment + MIB
        _wait_for(lambda: _held(server, bundle_id) >= point, "the kill point")
        held_at_kill = _kill(send, server, bundle_id)
        held = _held(server, bundle_id)
        assert segment < point <= held_at_kill <= held < size  # past the first segment, short
        assert not list((server.root / "pub" / "outgoing").iterdir())  # nothing published

        resumed = _resume(server, bundle_id, tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads(resumed.stdout)
        assert (summary["id"], summary["payload_bytes"]) == (bundle_id, size)
        _check_resent(server, summary, held)
        assert not (tmp_path / "cache" / "airgap" / "send" / bundle_id).exists()
        _fetch_and_check(server, docker_client, image, keydir, tmp_path)


#: Kill while the payload is still being encoded, once the server holds this many MiB.
ENCODING = {"encoding-early": 1, "encoding-late": 40}


@pytest.mark.parametrize("rerun", ["same command", "--resume"])
@pytest.mark.parametrize("mib", list(ENCODING.values()), ids=list(ENCODING))
def test_send_killed_while_still_encoding_continues(
    docker_client: Any, image: Any, keydir: Path, tmp_path: Path, mib: int, rerun: str
) -> None:
    """No rate limit: on loopback the upload keeps pace with the encoder, so the kill lands
    before the payload is whole and its manifest exists. The rerun encodes again with the key
    the spool kept, checks the bytes against the spool and sends only what the server lacks."""
    with _appliance(tmp_path, keydir) as server, _sending(server, keydir, tmp_path) as send:
        bundle_id = _bundle_id(tmp_path)
        _wait_for(lambda: _held(server, bundle_id) >= mib * MIB, "the kill point")
        if _spooled_manifest(tmp_path, bundle_id).exists():
            pytest.skip("the encoder finished before the kill point: nothing to show")
        _kill(send, server, bundle_id)
        held = _held(server, bundle_id)
        assert held >= mib * MIB

        if rerun == "same command":
            again = run_airgap(
                _send_argv(server, keydir), env=_env(tmp_path, server.password("sender"))
            )
            assert f"continuing the interrupted send of bundle {bundle_id}" in again.stderr
        else:
            again = _resume(server, bundle_id, tmp_path, "--sign-key", keydir / "signing.key")
        assert again.returncode == 0, again.stderr
        summary = json.loads(again.stdout)
        assert summary["id"] == bundle_id
        _check_resent(server, summary, held)
        assert not (tmp_path / "cache" / "airgap" / "send" / bundle_id).exists()
        _fetch_and_check(server, docker_client, image, keydir, tmp_path)


@contextlib.contextmanager
def _cut_while_encoding(
    image: Any, keydir: Path, tmp_path: Path, held: int
) -> Iterator[tuple[Server, list[str], dict[str, str], str, str]]:
    """A send of ``image`` under a name of its own (which the test may move), killed once the
    server holds ``held`` bytes and before the payload is whole: the appliance, the send's
    arguments and environment, its bundle id and the name (removed on the way out)."""
    moved = f"airgap-sendkill-moved:{uuid.uuid4().hex[:12]}"
    image.tag(moved)
    try:
        with _appliance(tmp_path, keydir) as server:
            argv = [moved if arg == TAG else arg for arg in _send_argv(server, keydir)]
            env = _env(tmp_path, server.password("sender"))
            send = spawn_airgap(argv, env=env)
            bundle_id = _bundle_id(tmp_path)
            _wait_for(lambda: _held(server, bundle_id) >= held, "the kill point")
            if _spooled_manifest(tmp_path, bundle_id).exists():
                pytest.skip("the encoder finished before the kill point: nothing to show")
            _kill(send, server, bundle_id)
            yield server, argv, env, bundle_id, moved
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            image.client.images.remove(moved, force=True)


def _sent_anew(server: Server, again: subprocess.CompletedProcess[str], old: str) -> Any:
    """The rerun's summary, once its new bundle is published and the old partial gone."""
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["id"] != old
    assert not list((server.root / "pub" / "incoming" / "sender").glob(f"{old}*"))
    signature = server.root / "pub" / "outgoing" / f"{summary['id']}.manifest.json.minisig"
    _wait_for(signature.exists, "the new bundle to be published")
    return summary


def test_a_send_that_cannot_be_repeated_is_sent_anew(
    docker_client: Any, image: Any, keydir: Path, tmp_path: Path
) -> None:
    """The image behind the name changed between the kill and the rerun: the bytes encoded
    again differ from the spool's, so the interrupted bundle is dropped and a new one sent."""
    with _cut_while_encoding(image, keydir, tmp_path, MIB) as (server, argv, env, old, moved):
        other = build_image(docker_client, moved, extra='LABEL moved="1"\n')
        again = run_airgap(argv, env=env)
        assert f"cannot continue bundle {old}: the payload encoded again" in again.stderr
        summary = _sent_anew(server, again, old)
        assert summary["payload_bytes"] < 4 * MIB  # busybox
        assert other.id != image.id


@pytest.mark.parametrize("content", ["same", "changed"])
def test_a_spool_that_lost_what_the_server_holds_is_sent_anew(
    docker_client: Any, image: Any, blob: Path, keydir: Path, tmp_path: Path, content: str
) -> None:
    """A crash (power lost, not a kill) can leave the spool shorter than what reached the
    server. Found in review: the rerun encrypted with the same key from the spool's end, with
    no check of the server's bytes past it, so a changed image put two ciphertexts under one
    key and nonce on the drop box. A spool that lost what was sent cannot tell what the key
    encrypted there: the bundle is sent anew, under a new key, whether or not the image
    changed, and the old partial goes."""
    with _cut_while_encoding(image, keydir, tmp_path, 8 * MIB) as (server, argv, env, old, moved):
        spool = tmp_path / "cache" / "airgap" / "send" / old
        os.truncate(spool / f"{old}.tar.zst.age.part", 0)  # what the crash left
        if content == "changed":
            extra = 'COPY blob.bin /blob.bin\nLABEL lost="1"\n'  # as long, other bytes
            build_image(docker_client, moved, extra=extra, files=[blob])
        again = run_airgap(argv, env=env)
        assert f"cannot continue bundle {old}: the spool lost bytes" in again.stderr
        _sent_anew(server, again, old)
