"""A sender hears of bundles the appliance refused: ``ID.refused`` notices in its area."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap.client.ftp import Refused, UnknownHost, Unreachable, WrongPlace
from airgap.client.refusals import MAX_NOTICES, Notice, take_refusals
from airgap.client.sendledger import SendLedger
from airgap.shared.errors import CertificateMismatch, LoginError, TransferError
from airgap.shared.ids import new_bundle_id
from tests.conftest import run_airgap, spawn_airgap
from tests.server.conftest import Server, start_server, wait_for
from tests.test_sendledger import LAYERS, _manifest


class _Listing:
    """A drop box's listing (a unit-test stand-in for the FTP transport)."""

    def __init__(self, names: list[str], *, fails: TransferError | None = None) -> None:
        self.names, self.fails = names, fails
        self.deleted: list[str] = []

    def list(self) -> list[str]:
        if self.fails is not None:
            raise self.fails
        return list(self.names)

    def delete(self, name: str) -> None:
        self.deleted.append(name)


def test_notices_are_read_once_each_and_junk_is_not_one(tmp_path: Path) -> None:
    box = "ftps://sender@box:2121/"
    ledger = SendLedger(tmp_path, box, ("age1alice",))
    sent = _manifest(LAYERS[:1])
    ledger.record(sent, {})
    names = [f"{sent.id}.refused", "x.refused", "../y.refused", f"{sent.id}.tar.zst.age.part"]
    listing = _Listing(names)
    assert take_refusals(listing, tmp_path, box) == [Notice(sent.id, ours=True)]
    assert listing.deleted == [f"{sent.id}.refused"]
    assert ledger.far_side().layers == {}


def test_a_notice_of_a_bundle_sent_from_elsewhere_says_so(tmp_path: Path) -> None:
    """Machines sharing one sender account: the first to read a notice takes it up."""
    box = "ftps://sender@box:2121/"
    SendLedger(tmp_path, box, ("age1alice",)).record(_manifest(LAYERS[:1]), {})
    elsewhere = new_bundle_id()
    listing = _Listing([f"{elsewhere}.refused"])
    assert take_refusals(listing, tmp_path, box) == [Notice(elsewhere, ours=False)]


@pytest.mark.parametrize(
    "refusal",
    [
        TransferError("listing: 450 No files found"),  # an empty folder, for some servers
        Refused("listing: refused by the server (502 NLST not implemented)"),
    ],
)
def test_a_server_that_will_not_list_has_left_no_notice(
    tmp_path: Path, refusal: TransferError
) -> None:
    """Some FTP servers answer 450 to a listing of an empty folder, or have no NLST: the
    send goes on."""
    assert take_refusals(_Listing([], fails=refusal), tmp_path, "ftp://u@h/") == []


@pytest.mark.parametrize(
    "refusal",
    [
        LoginError("ftp://u@h/: login refused (530 Login incorrect.)"),
        CertificateMismatch("connecting: not the pinned certificate"),
        WrongPlace("connecting: refused by the server (550 a sender may not enter here.)"),
        # Nothing answers: the send would encode everything for a server that is not there.
        UnknownHost("h: no such host"),
        Unreachable("connecting to h:21: connection refused"),
    ],
)
def test_a_refusal_of_the_login_or_the_url_ends_the_send_at_the_listing(
    tmp_path: Path, refusal: TransferError
) -> None:
    """Found in review: a refused login was taken for a server that will not list; the send
    encoded everything, then logged in and was refused again."""
    with pytest.raises(type(refusal)):
        take_refusals(_Listing([], fails=refusal), tmp_path, "ftp://u@h/")


def test_a_listing_of_endless_notices_is_taken_up_a_hundred_at_a_time(tmp_path: Path) -> None:
    names = [f"{new_bundle_id()}.refused" for _ in range(MAX_NOTICES * 3)]
    listing = _Listing(names)
    assert len(take_refusals(listing, tmp_path, "ftp://u@h/")) == MAX_NOTICES
    assert len(listing.deleted) == MAX_NOTICES


@contextlib.contextmanager
def _refused_once(
    keydir: Path, tmp_path: Path
) -> Iterator[tuple[Server, list[str | Path], dict[str, str], str, Path]]:
    """An appliance trusting another signer, and a send it refused: the send's arguments,
    environment, the refused bundle and where its notice waits."""
    stranger = tmp_path / "stranger.pub"
    assert run_airgap(["keygen", "--out", tmp_path / "k"]).returncode == 0
    stranger.write_text((tmp_path / "k" / "signing.pub").read_text())
    server = start_server(tmp_path / "root", "--tls", "off", "--trusted-signer", str(stranger))
    try:
        (tmp_path / "report.txt").write_bytes(os.urandom(10_000))
        send: list[str | Path] = ["send", "--file", tmp_path / "report.txt"]
        send += ["-R", keydir / "recipient.txt", "--sign-key", keydir / "signing.key"]
        send += ["--server", f"ftp://sender@127.0.0.1:{server.port}/", "--json"]
        env = {"AIRGAP_PASSWORD": server.password("sender"), "XDG_CACHE_HOME": str(tmp_path)}
        first = run_airgap(send, env=env)
        assert first.returncode == 0, first.stderr
        refused = json.loads(first.stdout)["id"]
        notice = server.root / "pub" / "incoming" / "sender" / f"{refused}.refused"
        assert wait_for(notice.exists)
        yield server, send, env, refused, notice
    finally:
        server.stop()


def test_the_next_send_says_the_appliance_refused_a_bundle(keydir: Path, tmp_path: Path) -> None:
    with _refused_once(keydir, tmp_path) as (_, send, env, refused, notice):
        second = run_airgap(send, env=env)
        assert second.returncode == 0, second.stderr
        assert f"the drop box refused bundle {refused}, sent earlier" in second.stderr
        assert not notice.exists()
        third = run_airgap(send, env=env)
        assert third.returncode == 0, third.stderr
        assert refused not in third.stderr  # told once (of the second bundle now, refused too)


def test_send_resume_reads_the_notices_too(keydir: Path, tmp_path: Path) -> None:
    """Before, only a new send took notices up: ``send --resume`` finished its bundle and
    left the ledgers counting a refused bundle's layers as delivered. The send to resume is
    cut (killed once wholly encoded, its upload throttled) before the refusal, whose notice
    a new send would take up itself."""
    stranger = tmp_path / "stranger.pub"
    assert run_airgap(["keygen", "--out", tmp_path / "k"]).returncode == 0
    stranger.write_text((tmp_path / "k" / "signing.pub").read_text())
    server = start_server(
        tmp_path / "root",
        "--tls",
        "off",
        "--trusted-signer",
        str(stranger),
        "--max-rate",
        "1000000",
    )
    try:
        url = f"ftp://sender@127.0.0.1:{server.port}/"
        env = {"AIRGAP_PASSWORD": server.password("sender"), "XDG_CACHE_HOME": str(tmp_path)}
        keys: list[str | Path] = ["-R", keydir / "recipient.txt"]
        keys += ["--sign-key", keydir / "signing.key", "--server", url, "--json"]
        (tmp_path / "big.bin").write_bytes(os.urandom(4 << 20))  # 4 s at the server's rate
        cut = spawn_airgap(["send", "--file", tmp_path / "big.bin", *keys], env=env)
        spools = tmp_path / "airgap" / "send"
        assert wait_for(lambda: list(spools.glob("*/*.manifest.json")))
        cut.kill()
        cut.communicate()
        (spooled,) = spools.iterdir()

        (tmp_path / "report.txt").write_bytes(os.urandom(10_000))
        first = run_airgap(["send", "--file", tmp_path / "report.txt", *keys], env=env)
        assert first.returncode == 0, first.stderr
        refused = json.loads(first.stdout)["id"]
        notice = server.root / "pub" / "incoming" / "sender" / f"{refused}.refused"
        assert wait_for(notice.exists)

        resumed = run_airgap(["send", "--resume", spooled.name, "--server", url], env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert f"the drop box refused bundle {refused}, sent earlier" in resumed.stderr
        assert not notice.exists()
    finally:
        server.stop()
