"""Uploads nobody writes any more expire (partials anywhere, and whatever a sender's area
holds); everything else in the root stays."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from airgap.server.audit import AuditLog
from airgap.server.layout import Layout
from airgap.server.limits import BusyFiles
from airgap.server.sweep import sweep
from tests.server.conftest import stor, wait_for

pytestmark = pytest.mark.timeout(60)

DAY = 24 * 3600


def _aged(path: Path, data: bytes, *, days: float) -> Path:
    path.write_bytes(data)
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _records(layout: Layout, event: str) -> list[dict[str, object]]:
    lines = layout.audit_file.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_only_stale_uploads_go(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    layout.create()
    area = layout.incoming / "sender"
    area.mkdir()
    old = _aged(area / "A.tar.zst.age.part", b"x" * 1000, days=8)
    anonymous = _aged(layout.incoming / "image.tar.part", b"y" * 10, days=8)
    fresh = _aged(area / "B.tar.zst.age.part", b"z", days=1)
    # A payload renamed whole whose manifest and signature never came (found in review: it
    # held the sender's quota for good, and the sender may not delete it).
    unpublished = _aged(area / "C.tar.zst.age", b"w", days=30)
    shared = _aged(layout.incoming / "book.tar", b"t", days=30)  # the anonymous exchange
    # A payload whole for weeks beside the manifest its client resumed with today: kept.
    bundle = "01M8H7DFPER3EW629M96A8Y05V"
    resumed = _aged(area / f"{bundle}.tar.zst.age", b"r", days=30)
    resumed_manifest = _aged(area / f"{bundle}.manifest.json.part", b"{", days=0)
    published = _aged(layout.outgoing / "D.tar.zst.age.part", b"v", days=30)
    outside = _aged(tmp_path / "victim.part", b"secret", days=30)
    link = area / "E.tar.zst.age.part"
    link.symlink_to(outside)
    os.utime(link, (0, 0), follow_symlinks=False)
    folder = area / "F.part"
    folder.mkdir()
    os.utime(folder, (0, 0))
    busy = BusyFiles()
    held = _aged(area / "G.tar.zst.age.part", b"u", days=9)
    assert busy.claim([held])  # an upload has it open, stalled
    # The publisher's notice of a refused bundle waits for the sender's next send, however
    # late (found in review: a sender sending less than weekly was never told); a file that
    # only looks like one does not.
    notice = _aged(area / "01M8H7DFPER3EW629M96A8Y05W.refused", b"", days=60)
    posing = _aged(area / "01M8H7DFPER3EW629M96A8Y05X.refused", b"data", days=60)

    audit = AuditLog(layout.audit_file)
    deleted = sweep(layout, busy=busy, audit=audit, older_than=7 * DAY)
    audit.close()

    assert sorted(deleted) == sorted([old, anonymous, unpublished, posing])
    assert not old.exists() and not anonymous.exists()
    kept_ones = (fresh, shared, published, outside, folder, held, resumed, resumed_manifest)
    for kept in (*kept_ones, notice):
        assert kept.exists(), kept
    assert link.is_symlink() and outside.read_bytes() == b"secret"
    records = {r["file"]: r for r in _records(layout, "expire")}
    assert set(records) == {
        "pub/incoming/sender/A.tar.zst.age.part",
        "pub/incoming/image.tar.part",
        "pub/incoming/sender/C.tar.zst.age",
        f"pub/incoming/sender/{posing.name}",
    }
    assert records["pub/incoming/sender/A.tar.zst.age.part"]["bytes"] == 1000
    assert int(str(records["pub/incoming/image.tar.part"]["idle_seconds"])) >= 8 * DAY - 60
    assert not busy.is_busy(old) and busy.is_busy(held)


def test_a_partial_written_after_it_was_found_stale_stays(tmp_path: Path) -> None:
    """The sweep looks again (same inode, same mtime) before it deletes: an upload resuming
    between the two looks keeps its partial."""
    layout = Layout(tmp_path / "root")
    layout.create()
    late = _aged(layout.incoming / "Y.part", b"y", days=8)
    audit = AuditLog(layout.audit_file)
    real_lstat = Path.lstat

    def written_meanwhile(self: Path) -> os.stat_result:
        if self == late:
            with late.open("ab") as handle:
                handle.write(b"resumed")
        return real_lstat(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "lstat", written_meanwhile)
        assert sweep(layout, busy=BusyFiles(), audit=audit, older_than=7 * DAY) == []
    audit.close()
    assert late.read_bytes() == b"yresumed"
    assert _records(layout, "expire") == []


def test_the_appliance_expires_an_abandoned_upload_and_the_sender_starts_again(serve):
    server = serve("--tls", "off", "--partial-expiry", "2")
    client = server.ftp("sender")
    area = server.root / "pub/incoming/sender"
    stor(client, "01ABANDONED.tar.zst.age.part", b"a" * 5000)
    assert client.size("01ABANDONED.tar.zst.age.part") == 5000
    deadline = time.monotonic() + 20
    while "expire" not in server.audit() and time.monotonic() < deadline:
        time.sleep(0.2)  # the record comes once the file is gone
    assert not (area / "01ABANDONED.tar.zst.age.part").exists()
    (record,) = [r for r in map(json.loads, server.audit().splitlines()) if r["event"] == "expire"]
    assert record["file"] == "pub/incoming/sender/01ABANDONED.tar.zst.age.part"
    assert record["bytes"] == 5000
    # The sender's client finds no partial and uploads from the start.
    with contextlib.suppress(Exception):
        client.voidcmd("NOOP")
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    with pytest.raises(Exception, match="550"):
        client.size("01ABANDONED.tar.zst.age.part")
    assert stor(client, "01ABANDONED.tar.zst.age.part", b"b" * 10).startswith("226")


def test_a_whole_bundle_with_old_times_is_published_at_start_not_expired(
    serve, tmp_path, keyset, keydir
):
    """Found in review: the first sweep ran beside the publisher's start-up scan, and a
    bundle left whole across a restart, with old times (a restored root), was deleted about
    half the time instead of published."""
    from tests.server.test_publish_and_clients import make_bundle

    root = tmp_path / "root"
    serve("--tls", "off", root=root).stop()  # the layout, the accounts
    area = root / "pub/incoming/sender"
    area.mkdir(exist_ok=True)
    _, files = make_bundle(tmp_path, keyset)
    for name, data in files.items():
        _aged(area / name, data, days=8)
    server = serve("--tls", "off", "--trusted-signer", str(keydir / "signing.pub"), root=root)
    outgoing = root / "pub/outgoing"
    deadline = time.monotonic() + 20
    while len(list(outgoing.iterdir())) < len(files) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in outgoing.iterdir()) == sorted(files)
    time.sleep(1)  # the sweep, after the scan
    assert "expire" not in server.audit()


def test_zero_keeps_partials_for_ever(serve):
    server = serve("--tls", "off", "--partial-expiry", "0")
    client = server.ftp("sender")
    stor(client, "01KEPT.tar.zst.age.part", b"k" * 100)
    part = server.root / "pub/incoming/sender/01KEPT.tar.zst.age.part"
    os.utime(part, (0, 0))  # last written in 1970
    time.sleep(2.5)
    assert part.exists()
    assert "expire" not in server.audit()


def test_an_idle_appliance_sweeps_too(serve):
    """Found in review: with the IO loop waiting for its next timer rather than a second at
    most, the sweep's timer went unseen until some client connected."""
    server = serve("--tls", "off", "--partial-expiry", "2")
    area = server.root / "pub/incoming/sender"
    area.mkdir(parents=True, exist_ok=True)
    stale = area / "01FORGOTTEN.tar.zst.age.part"
    stale.write_bytes(b"f" * 100)
    os.utime(stale, (time.time() - 60, time.time() - 60))
    deadline = time.monotonic() + 15
    while stale.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stale.exists(), "no client came, and the sweep never ran"


# The publisher's intent record meets a full disk, the first FAILS times (one os.write per
# line, as in test_hashing).
_FULL_DISK = """
import errno, os
from airgap.server import secretfile

_replace = secretfile.replace
_tries = []

def _full(path, text):
    if path.name.startswith("publishing-"):
        _tries.append(path)
    if path.name.startswith("publishing-") and len(_tries) <= FAILS:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _replace(path, text)

secretfile.replace = _full
"""


def test_a_bundle_whose_publish_failed_is_published_later_not_expired(serve, tmp_path, keyset):
    """Found in review: a check that failed (a full disk as the bundle moved) was only
    logged. The bundle sat signed in its area, never published, and the sweep deleted it as
    abandoned, though its sender had been told it was sent."""
    from tests.server.test_publish_and_clients import make_bundle, upload_bundle

    server = serve("--tls", "off", "--partial-expiry", "2", prelude="FAILS = 1\n" + _FULL_DISK)
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    signature = server.root / f"pub/outgoing/{bundle_id}.manifest.json.minisig"
    assert wait_for(signature.exists, timeout=20), server.stderr
    assert f"bundle check {bundle_id} failed" in server.stderr
    assert sorted(p.name for p in (server.root / "pub/outgoing").iterdir()) == sorted(files)
    assert list((server.root / "pub/incoming/sender").iterdir()) == []
    assert "expire" not in server.audit()


def test_a_bundle_that_cannot_be_published_is_not_expired(serve, tmp_path, keyset):
    """However long its check keeps failing: the operator is told, the bundle waits."""
    from tests.server.test_publish_and_clients import make_bundle, upload_bundle

    server = serve("--tls", "off", "--partial-expiry", "2", prelude="FAILS = 10**6\n" + _FULL_DISK)
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    # Past the expiry, the upkeep running every second: each turn tries again.
    assert wait_for(lambda: server.stderr.count(f"bundle check {bundle_id} failed") >= 4)
    area = server.root / "pub/incoming/sender"
    assert sorted(p.name for p in area.iterdir()) == sorted(files)
    assert "expire" not in server.audit()
    assert not (server.root / "pub/outgoing" / f"{bundle_id}.manifest.json.minisig").exists()


def test_a_resume_whose_partial_expired_meanwhile_starts_again(serve, tmp_path):
    """Found in review: the sweep deleting a partial between a resuming sender's SIZE and
    its REST + STOR got a 550 that stood, and the send ended (exit 4)."""
    from airgap.client.ftp import FtpTarget, FtpTransport
    from airgap.client.spool import Backoff, SpooledTransport
    from airgap.shared.ids import new_bundle_id

    server = serve("--tls", "off")
    area = server.root / "pub/incoming/sender"
    name = f"{new_bundle_id()}.tar.zst.age"
    data = os.urandom(300_000)
    local = tmp_path / "payload"
    local.write_bytes(data)
    target = FtpTarget.parse(f"ftp://sender@127.0.0.1:{server.port}/")

    class Expiring(FtpTransport):
        def size(self, asked: str) -> int | None:
            held = super().size(asked)
            if asked.endswith(".part") and held:
                (area / asked).unlink()  # the sweep, just after the answer
            return held

    remote = Expiring(target, server.password("sender"), timeout=20)
    with remote.writer(name + ".part") as out:  # what an earlier run got there
        out.write(data[:100_000])
    spooled = SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(attempts=3, first=0.01))
    spooled.upload_file(name, local)
    remote.close()
    assert (area / name).read_bytes() == data
