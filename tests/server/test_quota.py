"""A sender's quota holds across every upload open in its area at once, not per upload."""

from __future__ import annotations

import contextlib
import ftplib
import os

import pytest

from tests.server.conftest import stor

pytestmark = pytest.mark.timeout(60)

QUOTA = 100_000


def test_parallel_uploads_share_the_quota_and_keep_what_they_wrote(serve):
    server = serve("--tls", "off", "--quota-bytes", str(QUOTA))
    clients = [server.ftp("sender") for _ in range(3)]
    data = b"z" * 60_000
    conns = []
    for number, client in enumerate(clients):  # all open before a byte arrives: each alone
        client.voidcmd("TYPE I")  # would see an empty area and room for its 60 000 bytes
        conns.append(client.transfercmd(f"STOR up{number}.part"))
    replies = []
    for client, conn in zip(clients, conns, strict=True):
        with contextlib.suppress(OSError):  # a server that stopped reading may reset it
            conn.sendall(data)
        conn.close()
        try:
            replies.append(client.voidresp())
        except ftplib.all_errors as exc:
            replies.append(str(exc))
    assert replies[0].startswith("226")
    assert [reply[:3] for reply in replies[1:]] == ["552", "552"], replies
    area = server.root / "pub/incoming/sender"
    assert sum(path.stat().st_size for path in area.iterdir()) <= QUOTA
    # What the stopped uploads wrote stays, and resumes once there is room.
    client = clients[1]
    client.delete("up0.part")
    have = client.size("up1.part")
    assert have is not None
    stor(client, "up1.part", data[have:], rest=have)
    assert (area / "up1.part").read_bytes() == data
    assert sum(path.stat().st_size for path in area.iterdir()) <= QUOTA


def test_an_area_full_of_files_takes_no_new_one_but_finishes_those_it_has(serve):
    """Found in review: empty files count against no quota, and pipelined STORs without a
    data connection made 3,000 of them a second, each never expiring."""
    from airgap.server.storage import MAX_AREA_FILES

    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "A.part", b"start")
    area = server.root / "pub/incoming/sender"
    for number in range(MAX_AREA_FILES - 1):
        (area / f"empty{number:04}").touch()
    with pytest.raises(ftplib.error_perm, match=f"552 This area holds {MAX_AREA_FILES} files a"):
        stor(client, "B.part", b"new")
    assert not (area / "B.part").exists()
    assert stor(client, "A.part", b"-resumed", rest=5).startswith("226")
    assert (area / "A.part").read_bytes() == b"start-resumed"
    (area / "empty0000").unlink()
    assert stor(client, "B.part", b"new").startswith("226")


def test_a_file_that_leaves_the_area_mid_count_is_not_counted(tmp_path, monkeypatch):
    """Found in review: the publisher (a worker thread) moves a finished bundle out of an area
    while an upload counts it; the stat of the vanished file raised out of STOR."""
    from airgap.server import storage

    (tmp_path / "kept.part").write_bytes(b"k" * 10)
    (tmp_path / "published.tar.zst.age").write_bytes(b"p" * 1000)
    (tmp_path / "subdir").mkdir()
    real_scandir = os.scandir

    def scandir_then_publish(path):  # the listing is made, then the file goes
        entries = list(real_scandir(path))
        (tmp_path / "published.tar.zst.age").unlink()
        return contextlib.nullcontext(entries)

    monkeypatch.setattr(storage.os, "scandir", scandir_then_publish)
    upload = storage.Target(str(tmp_path / "new.part"), exists=False, size=0)
    assert storage.survey(upload, weigh=True) == storage.Survey(files=1, size=10)
