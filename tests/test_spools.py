"""``airgap spool show|drop``: a send killed mid-upload to a real vsftpd, listed, then given up;
a partial download beside it; a running send that drop refuses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airgap.client import sendjob, spools
from airgap.client.places import Place, check_space, forget_spool, send_spool
from airgap.client.unfinished import Recipe, began_encoding, begin, encoded_bytes
from airgap.shared import minisign
from airgap.shared.errors import Interrupted, StorageError, UsageError
from airgap.shared.ids import made_at, new_bundle_id
from tests import vsftpd
from tests.conftest import run_airgap, small_disk, spawn_airgap
from tests.test_remote import _env, _wait_for, needs_vsftpd


def test_a_bundle_id_tells_when_it_was_made() -> None:
    assert made_at(new_bundle_id(now=1_700_000_000.123)) == pytest.approx(1_700_000_000.123)


def test_listing_and_dropping_sends_and_downloads(tmp_path: Path) -> None:
    cache = tmp_path / "xdg" / "airgap"
    sent, fetched = new_bundle_id(now=1_700_000_000), new_bundle_id(now=1_700_000_001)
    recipe = Recipe("ftp://sender@127.0.0.1:2121/", ("age1x",), 1, images=("app:1.0",))
    begin(cache / "send" / sent, recipe, None)  # holds its lock, as a running send does
    (cache / "send" / sent / f"{sent}.tar.zst.age.part").write_bytes(b"x" * 1000)
    download = cache / "fetch" / "0123456789abcdef" / f"{fetched}.tar.zst"
    download.parent.mkdir(parents=True)
    download.write_bytes(b"y" * 500)
    (download.parent / "notes.txt").write_text("not a payload")

    found = spools.held(cache)
    assert [(h.bundle_id, h.kind) for h in found] == [(sent, "send"), (fetched, "download")]
    assert found[0].content == ("app:1.0",) and found[0].destination == recipe.destination
    assert found[0].busy  # this process holds it
    assert found[0].size >= 1000 and found[1].size == 500

    with pytest.raises(StorageError, match="being sent right now"):
        spools.drop(cache, sent)
    with pytest.raises(UsageError, match="nothing of bundle"):
        spools.drop(cache, new_bundle_id())
    with pytest.raises(UsageError, match="not a bundle id"):
        spools.drop(cache, "../etc")
    assert [h.path for h in spools.drop(cache, fetched)] == [download]
    assert not download.exists() and (download.parent / "notes.txt").exists()

    # A download of the send being sent stays with it; --all drops all else, and says so.
    download = download.parent / f"{sent}.tar.zst.age"
    download.write_bytes(b"z")
    with pytest.raises(StorageError, match="being sent right now"):
        spools.drop(cache, sent)
    assert download.exists()
    other = new_bundle_id(now=1_700_000_002)
    begin_elsewhere = cache / "send" / other
    begin_elsewhere.mkdir(parents=True)
    dropped = run_airgap(["spool", "drop", "--all"], env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert dropped.returncode == 1, dropped.stderr
    assert f"airgap: bundle {sent} is being sent right now" in dropped.stderr
    assert f"dropped {other}" in dropped.stderr and "1 bundle not dropped" in dropped.stderr
    assert not begin_elsewhere.exists() and download.exists()


def test_a_manifest_an_earlier_airgap_spooled_is_listed_and_dropped(tmp_path: Path) -> None:
    """Earlier, a manifest of 1 MiB or more went through the spool, unverified, and stayed
    there, hidden: it is listed with its bundle now, and drop --all removes it."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    place = tmp_path / "xdg" / "airgap" / "fetch" / "0123456789abcdef"
    place.mkdir(parents=True)
    bundle_id = new_bundle_id()
    manifest = place / f"{bundle_id}.manifest.json"
    manifest.write_bytes(b"{" * (1 << 20))
    shown = run_airgap(["spool", "show", "--json"], env=env)
    assert shown.returncode == 0, shown.stderr
    assert [h["id"] for h in json.loads(shown.stdout)["held"]] == [bundle_id]
    dropped = run_airgap(["spool", "drop", "--all"], env=env)
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped {bundle_id}" in dropped.stderr and not manifest.exists()


def _where(ftp: vsftpd.Vsftpd, tmp_path: Path) -> tuple[str, dict[str, str]]:
    return f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/", _env(tmp_path, ftp.password)


def _send(payload: Path, url: str, keydir: Path, *extra: str) -> list[str | Path]:
    send: list[str | Path] = ["send", "--file", payload, "--server", url]
    return [*send, "-R", keydir / "recipient.txt", "--sign-key", keydir / "signing.key", *extra]


@needs_vsftpd
def test_a_send_killed_mid_upload_is_listed_then_dropped(keydir: Path, tmp_path: Path) -> None:
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(24 << 20))
    with vsftpd.running(tmp_path / "ftp", max_rate=4 << 20) as ftp:
        url, env = _where(ftp, tmp_path)
        send = _send(payload, url, keydir, "--json")
        sending = spawn_airgap(send, env=env)
        spool = tmp_path / "cache" / "airgap" / "send"
        _wait_for(lambda: any(Path(ftp.home).glob("*.part")), "the upload to start")

        busy = run_airgap(["spool", "show", "--json"], env=env)
        (item,) = json.loads(busy.stdout)["held"]
        assert item["kind"] == "send" and item["busy"] is True
        refused = run_airgap(["spool", "drop", item["id"]], env=env)
        assert refused.returncode == 1 and "being sent right now" in refused.stderr

        sending.send_signal(signal.SIGKILL)
        sending.communicate(timeout=30)
        shown = run_airgap(["spool", "show"], env=env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"{item['id']}  send  ")
        assert f"{payload} to {url}" in shown.stdout
        assert "sending now" not in shown.stdout
        assert (spool / item["id"] / "payload.key").exists()

        dropped = run_airgap(["spool", "drop", item["id"]], env=env)
        assert dropped.returncode == 0, dropped.stderr
        assert f"dropped {item['id']}" in dropped.stderr
        assert not (spool / item["id"]).exists()
        assert json.loads(run_airgap(["spool", "show", "--json"], env=env).stdout)["held"] == []

        again = run_airgap(send, env=env)  # a new bundle, not the dropped one continued
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["id"] != item["id"]


@needs_vsftpd
@pytest.mark.parametrize("spooled_first", [16 << 20, 32 << 20], ids=["encoding", "encoded"])
def test_an_interrupted_send_stops_uploading_at_once(
    keydir: Path, tmp_path: Path, spooled_first: int
) -> None:
    """Ctrl-C while still encoding, or once encoded while the upload catches up: exit 130
    without first uploading what the spool holds (a rerun continues it: test_remote.py)."""
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(32 << 20))
    with vsftpd.running(tmp_path / "ftp", max_rate=1 << 20) as ftp:
        url, env = _where(ftp, tmp_path)
        send = _send(payload, url, keydir, "--level", "19")  # a slow encoding
        sending = spawn_airgap(send, env=env)
        spool = tmp_path / "cache" / "airgap" / "send"

        def spooled() -> int:
            return sum(p.stat().st_size for p in spool.rglob("*.part")) if spool.exists() else 0

        _wait_for(lambda: spooled() >= spooled_first, "the spool to run ahead of the upload")
        sending.send_signal(signal.SIGINT)
        _, err = sending.communicate(timeout=120)
        assert sending.returncode == 130, err
        assert b"interrupted" in err and b"airgap spool drop" in err
        (partial,) = Path(ftp.home).glob("*.part")
        assert partial.stat().st_size < spooled() - (4 << 20)  # it stopped, far behind


@needs_vsftpd
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_fetch_stops_at_once_then_resumes(
    keydir: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """Ctrl-C mid-download: the thread that reads and verifies segments was blocked in a read
    of the slow link, and the exit waited for it (a 16 MiB segment at the link's pace). Now
    the transfer is cut and nothing waits; the rerun goes on from the spool. SIGTERM (docker
    stop; a client container's airgap is its PID 1, which ignored it) does the same."""
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(20 << 20))
    with vsftpd.running(tmp_path / "ftp", max_rate=2 << 20) as ftp:
        url, env = _where(ftp, tmp_path)
        drop = Path(ftp.home)
        keys = ["-R", keydir / "recipient.txt", "--sign-key", keydir / "signing.key"]
        sent = run_airgap(["send", "--file", payload, "--to", drop, *keys])
        assert sent.returncode == 0, sent.stderr
        out, state = tmp_path / "out", tmp_path / "state"
        fetch = ["fetch", "--server", url, "-i", keydir / "identity.txt"]
        fetch += ["--trust", keydir / "signing.pub", "--output-dir", out, "--state-dir", state]
        fetching = spawn_airgap(fetch, env=env)
        spool = tmp_path / "cache" / "airgap" / "fetch"

        def spooled() -> int:
            return sum(p.stat().st_size for p in spool.rglob("*.age")) if spool.exists() else 0

        _wait_for(lambda: spooled() >= 3 << 20, "the download to be under way")
        fetching.send_signal(stop)
        started = time.monotonic()
        _, err = fetching.communicate(timeout=60)
        waited = time.monotonic() - started
        assert fetching.returncode == 130 and b"airgap: error: interrupted" in err, err
        assert b"hint: run the same command again: what was downloaded stays" in err, err
        assert waited < 3, f"{waited:.1f} s: the rest of the segment came first ({spooled()} B)"
        assert spooled() < 16 << 20
        assert not out.exists() or not any(out.iterdir())

        again = run_airgap(fetch, env=env)
        assert again.returncode == 0, again.stderr
        assert (out / "big.bin").read_bytes() == payload.read_bytes()


def test_a_spool_began_encoding_only_with_a_byte_past_its_record(tmp_path: Path) -> None:
    """An empty .part (the writer opened, the save refused) is nothing to continue (review)."""
    spool = tmp_path / "01M8K984T5Y5XB057M5GVHWJXW"
    begin(spool, Recipe("ftp://u@h:1/", ("none",), 1, files=("/x",)), None)
    assert not began_encoding(spool)
    part = spool / "01M8K984T5Y5XB057M5GVHWJXW.tar.zst.part"
    part.touch()
    assert not began_encoding(spool)
    part.write_bytes(b"\x28")
    assert began_encoding(spool)
    assert not began_encoding(tmp_path / "gone")


def test_a_continued_send_needs_room_only_for_what_its_spool_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send that filled its disk and failed must go on once the rest fits: the bytes it
    encoded are compared, not written again, so they do not count twice (review)."""
    spool = tmp_path / "01M8K984T5Y5XB057M5GVHWJXW"
    begin(spool, Recipe("ftp://u@h:1/", ("none",), 1, files=("/x",)), None)
    (spool / "01M8K984T5Y5XB057M5GVHWJXW.tar.zst.part").write_bytes(b"\x28" * 7000)
    assert encoded_bytes(spool) == 7000
    assert encoded_bytes(tmp_path / "gone") == 0
    mib = 1 << 20
    free = 100 * mib
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    with pytest.raises(StorageError, match="not enough space"):
        check_space(spool, 150 * mib)
    check_space(spool, 150 * mib, held=60 * mib)
    with pytest.raises(StorageError, match="not enough space"):
        check_space(spool, 150 * mib, held=40 * mib)


def test_a_send_that_fails_before_encoding_forgets_its_spool_and_the_way_back_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the hint named a --resume of the spool the failure then removed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    place = Place(server="ftp://u@127.0.0.1:1/")
    recipe = Recipe(place.describe(), ("none",), 1, files=(str(tmp_path / "f"),))
    begun = sendjob.start(recipe, [], place)
    spool = send_spool(begun.bundle_id)
    assert spool.is_dir()

    def interrupted(*_: object) -> None:
        raise Interrupted("interrupted", hint=f"airgap send --resume {begun.bundle_id} ...")

    monkeypatch.setattr(sendjob, "_run", interrupted)
    by = sendjob.Sender(place, [], minisign.SecretKey.generate(), tmp_path / "ledgers")
    with pytest.raises(Interrupted) as caught:
        sendjob.run(recipe, begun, by)
    assert not spool.exists()
    assert caught.value.hint == "nothing was encoded yet: run the same command again"


class _Killed(BaseException):
    """SIGKILL, as far as this process can tell: what comes after it never runs."""


def test_a_spool_is_dropped_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by killing sends: a spool deleted file by file, killed halfway, lost its payload
    (every rerun failed, "lacks its payload") or its recipe (the rerun sent a new bundle and
    the old spool stayed for good). It is renamed away first; the next drop takes the rest."""
    sends = tmp_path / "send"
    spool = sends / new_bundle_id()
    spool.mkdir(parents=True)
    for name in ("send.json", "payload.key", "x.tar.zst.age"):
        (spool / name).write_bytes(b"x" * 100)
    real_rmtree = shutil.rmtree
    with monkeypatch.context() as killing:

        def rmtree(path: Any, ignore_errors: bool = False) -> None:
            real_rmtree(Path(path) / "x.tar.zst.age", ignore_errors=True)  # one file, then
            raise _Killed

        killing.setattr("airgap.client.places.shutil.rmtree", rmtree)
        with pytest.raises(_Killed):
            forget_spool(spool)
    assert not spool.exists()  # nothing a rerun takes for an unfinished send
    (left,) = sends.iterdir()
    assert left.name.startswith(".gone-") and spools.held(tmp_path) == []
    other = sends / new_bundle_id()
    other.mkdir()
    forget_spool(other)
    assert list(sends.iterdir()) == []


def test_a_send_record_the_disk_had_no_room_for_leaves_no_spool(tmp_path: Path) -> None:
    """Found in review: a full disk as the send's record was written left its spool with an
    empty record, listed as "? to ?" by `spool show` until dropped by hand."""
    with small_disk(tmp_path / "disk", "64k") as disk:
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"f" * 4096)
                filler.flush()
        spool = disk / "01M8K984T5Y5XB057M5GVHWJXW"
        with pytest.raises(StorageError, match="No space left on device") as refused:
            begin(spool, Recipe("ftp://u@h:1/", ("none",), 1, files=("/x",)), None)
        assert refused.value.hint is not None and "free some space" in refused.value.hint
        assert not spool.exists()
