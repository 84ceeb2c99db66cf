"""Publishing and uploads exclude each other: a payload being published is never written to.

The publisher's last step (the renames into ``pub/outgoing``) is held in the real server
process by a prelude until the test says go, so a sender's resume can be tried exactly in the
gap between the payload's hash and its move.
"""

from __future__ import annotations

import ftplib
import json
import time
from pathlib import Path

import pytest

from tests.server.conftest import Server, begin_stor, quarantined, stor, wait_for
from tests.server.test_publish_and_clients import make_bundle, payload_of, upload_bundle

pytestmark = pytest.mark.timeout(60)

# One os.write per line, as in test_hashing; GO is set above this text by hold_publishing().
_HOLD_PUBLISHING = """
import os, time
from airgap.server import publish

_publish = publish.Publisher._publish

def _held(self, bundle_id, files):
    os.write(2, f"airgap-test: publishing {bundle_id}\\n".encode())
    deadline = time.monotonic() + 30
    while not os.path.exists(GO) and time.monotonic() < deadline:
        time.sleep(0.02)
    return _publish(self, bundle_id, files)

publish.Publisher._publish = _held
"""


def hold_publishing(go: Path) -> str:
    return f"GO = {str(go)!r}\n" + _HOLD_PUBLISHING


def published(server: Server, bundle_id: str) -> bool:
    return (server.root / f"pub/outgoing/{bundle_id}.manifest.json.minisig").exists()


def test_a_payload_being_published_cannot_be_resumed(serve, tmp_path, keyset):
    go = tmp_path / "go"
    server = serve("--tls", "off", prelude=hold_publishing(go))
    bundle_id, files = make_bundle(tmp_path, keyset)
    payload = payload_of(files)
    upload_bundle(server, files)
    assert wait_for(lambda: f"airgap-test: publishing {bundle_id}" in server.stderr)
    # Checked and hashed, not moved yet: a resume now would write into the published file.
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    half = len(files[payload]) // 2
    tampered = bytes(b ^ 0xFF for b in files[payload][half:])
    try:
        conn = client.transfercmd(f"STOR {payload}", rest=half)
    except ftplib.error_temp as exc:
        refused = str(exc)
    else:
        conn.sendall(tampered)
        conn.close()
        refused = client.voidresp()
    go.touch()
    assert wait_for(lambda: published(server, bundle_id))
    assert (server.root / "pub/outgoing" / payload).read_bytes() == files[payload]
    assert refused.startswith("450"), refused


def test_an_open_upload_defers_publishing_until_it_ends(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    bundle_id, files = make_bundle(tmp_path, keyset)
    payload = payload_of(files)
    data = files[payload]
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    conn = begin_stor(client, payload)
    conn.sendall(data)  # the whole payload is there, but its upload is still open
    target = server.root / "pub/incoming/sender" / payload
    assert wait_for(lambda: target.exists() and target.stat().st_size == len(data))
    upload_bundle(server, {name: files[name] for name in files if name != payload})
    assert wait_for(lambda: f"bundle {bundle_id}: pending" in server.stderr)
    assert not published(server, bundle_id)
    conn.close()
    assert client.voidresp().startswith("226")
    assert wait_for(lambda: published(server, bundle_id))
    assert (server.root / "pub/outgoing" / payload).read_bytes() == data


def test_an_upload_replaced_before_its_data_connection_is_closed(serve):
    """A second STOR before the first's data connection replaces it: the first file is closed
    as its claim is released, so no writable handle outlives the claim (nor piles up)."""
    server = serve("--tls", "off")
    client = server.ftp("sender")
    for number in range(5):
        client.sendcmd("PASV")  # never connected: each upload waits for its data connection
        assert client.sendcmd(f"STOR q{number}.part").startswith("150")
    area = server.root / "pub/incoming/sender"
    fds = Path(f"/proc/{server.process.pid}/fd")
    open_in_area = [fd for fd in fds.iterdir() if Path(fd.readlink()).parent == area]
    assert len(open_in_area) == 1, open_in_area


# Held at the first move into pub/outgoing, after the check that nothing is there yet.
_HOLD_MOVES = """
import os, pathlib, time

_rename = pathlib.Path.rename

def _held(self, target):
    if "/pub/outgoing/" in str(target) and str(target).endswith((".zst", ".age")):
        os.write(2, b"airgap-test: moving\\n")
        deadline = time.monotonic() + 30
        while not os.path.exists(GO) and time.monotonic() < deadline:
            time.sleep(0.02)
    return _rename(self, target)

pathlib.Path.rename = _held
"""


def test_one_bundle_id_from_two_areas_is_published_once(serve, tmp_path, keyset):
    """Found in review: two areas' checks of one bundle id could both find pub/outgoing free
    and both move their files in, the second over the first (a rename replaces)."""
    go = tmp_path / "go"
    server = serve(
        "--tls", "off", "--anonymous", "upload", prelude=f"GO = {str(go)!r}\n" + _HOLD_MOVES
    )
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    anonymous = server.ftp("anonymous", "x@y")
    anonymous.cwd("pub/incoming")
    for name in sorted(files, key=lambda n: (n.endswith(".minisig"), n.endswith(".json"))):
        stor(anonymous, name, files[name])
    assert wait_for(lambda: "airgap-test: moving" in server.stderr), server.stderr
    time.sleep(1)  # time for the other area's check to reach its move too, were it let
    go.touch()
    assert wait_for(lambda: published(server, bundle_id))
    records = lambda: [json.loads(line) for line in server.audit().splitlines()]  # noqa: E731
    assert wait_for(lambda: any(r["event"] == "duplicate" for r in records())), server.stderr
    assert server.stderr.count("airgap-test: moving") == 1
    assert [r["bundle"] for r in records() if r["event"] == "publish"] == [bundle_id]
    # The very same bundle: its second copy is deleted, not quarantined (see
    # test_publish_and_clients.py for another bundle of that id).
    assert quarantined(server, "anonymous") + quarantined(server) == []
