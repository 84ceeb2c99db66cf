"""The sender's ledger: per destination and audience, atomic, and never a silent guess."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from airgap.client.saved import LayerFile
from airgap.client.sendledger import SendLedger, audience, drop_bundles, summaries
from airgap.shared import age
from airgap.shared.errors import StorageError
from airgap.shared.ids import new_bundle_id
from airgap.shared.layers import chain_ids
from airgap.shared.manifest import (
    Encryption,
    ImageEntry,
    Manifest,
    OmittedLayer,
    Payload,
    payload_name,
)
from tests.conftest import run_airgap

LAYERS = tuple("sha256:" + c * 64 for c in "123")


def _manifest(layers: tuple[str, ...], omitted: tuple[OmittedLayer, ...] = ()) -> Manifest:
    bundle_id = new_bundle_id()
    return Manifest(
        id=bundle_id,
        created="2026-11-28T00:00:00Z",
        tool="airgap-ftp/test",
        signer="0123456789ABCDEF",
        plaintext_size=1,
        plaintext_sha256="a" * 64,
        compression_level=1,
        encryption=Encryption("none"),
        payload=Payload(payload_name(bundle_id, encrypted=False), 1, "b" * 64, 65536, ("c" * 64,)),
        images=(ImageEntry("sha256:" + "e" * 64, ("app:1",), layers),),
        omitted=omitted,
    )


@pytest.mark.parametrize("who", [("passphrase",), ("age1alice", "passphrase")])
def test_a_passphrase_audience_keeps_no_ledger(tmp_path: Path, who: tuple[str, ...]) -> None:
    """Found in review: every passphrase send shared one ledger, so a send to one passphrase
    left out layers only a bundle under another passphrase carried."""
    first = SendLedger(tmp_path, "ftps://sender@box:2121/", who)
    first.record(_manifest(LAYERS), {LAYERS[0]: LayerFile(4096, None)})
    later = SendLedger(tmp_path, "ftps://sender@box:2121/", who)
    assert later.far_side().layers == {} and later.far_side().files == {}
    assert not list(tmp_path.iterdir())


def test_layers_are_known_per_destination_and_audience(tmp_path: Path) -> None:
    alice = SendLedger(tmp_path, "ftps://sender@box:2121/", ("age1alice",))
    first = _manifest(LAYERS[:2])
    alice.record(first, {LAYERS[0]: LayerFile(4096, None)})
    bottom, middle, top = chain_ids(LAYERS)
    assert alice.far_side().layers == {bottom: first.id, middle: first.id}
    assert alice.far_side().files == {LAYERS[0]: LayerFile(4096, None)}
    assert stat.S_IMODE(alice.path.stat().st_mode) == 0o600

    thin = _manifest(LAYERS, (OmittedLayer(bottom, first.id), OmittedLayer(middle, first.id)))
    alice.record(thin, {})
    assert alice.far_side().layers == {bottom: first.id, middle: first.id, top: thin.id}

    assert SendLedger(tmp_path, "ftps://sender@box:2121/", ("age1bob",)).far_side().layers == {}
    assert SendLedger(tmp_path, "/media/usb", ("age1alice",)).far_side().layers == {}
    (summary,) = summaries(tmp_path)
    assert summary.bundles == (first.id, thin.id) and summary.audience == ("age1alice",)
    assert alice.forget() and alice.far_side().layers == {}


def test_an_unreadable_ledger_is_an_error_with_a_way_out(tmp_path: Path) -> None:
    ledger = SendLedger(tmp_path / "sent", "/media/usb", ("none",))
    ledger.path.parent.mkdir()
    ledger.path.write_text('{"layers": []}')
    with pytest.raises(StorageError, match="unreadable") as caught:
        ledger.far_side()
    assert caught.value.hint is not None and "ledger forget --all" in caught.value.hint
    assert f"remove {ledger.path} to reset it alone" in caught.value.hint
    # Found in a walkthrough: it blocked show and forget of every other destination.
    other = SendLedger(tmp_path / "sent", "/media/other", ("none",))
    other.record(_manifest(LAYERS[:1]), {})
    shown = run_airgap(["ledger", "show", "--state-dir", tmp_path])
    assert shown.returncode == 0 and "/media/other" in shown.stdout, shown.stderr
    assert f"airgap: warning: ledger {ledger.path} is unreadable" in shown.stderr
    one = run_airgap(["ledger", "forget", "--to", "/media/other", "--state-dir", tmp_path])
    assert one.returncode == 0 and "forgot /media/other" in one.stderr, one.stderr
    assert not other.path.exists() and ledger.path.exists()
    # Found in review: well-formed JSON of the wrong types was an internal error; and with
    # the only ledger unreadable, show said the next send would be full (it stops instead).
    typed = tmp_path / "sent" / "0123456789abcdef.json"
    typed.write_text('{"layers": {}, "files": {}, "bundles": [], "audience": 5}')
    shown = run_airgap(["ledger", "show", "--state-dir", tmp_path])
    assert shown.returncode == 0 and shown.stderr.count("airgap: warning: ledger") == 2, shown
    assert "no ledger" not in shown.stderr
    usb = run_airgap(["ledger", "forget", "--to", "/media/usb", "--state-dir", tmp_path])
    assert usb.returncode == 1 and "no readable ledger of that destination" in usb.stderr
    typed.unlink()
    forgot = run_airgap(["ledger", "forget", "--all", "--state-dir", tmp_path])
    assert forgot.returncode == 0 and "forgot 1 ledger" in forgot.stderr, forgot.stderr
    assert not ledger.path.exists()


def test_the_audience_names_recipients_in_a_stable_order() -> None:
    one, two = (age.X25519Identity.generate().recipient for _ in range(2))
    assert (
        audience([one, two]) == audience([two, one]) == tuple(sorted([one.encode(), two.encode()]))
    )
    assert audience([]) == ("none",)
    assert audience([age.ScryptRecipient(b"pass")]) == ("passphrase",)


def test_a_refused_bundle_stops_counting_in_every_audience_of_its_destination(
    tmp_path: Path,
) -> None:
    box = "ftps://sender@box:2121/"
    alice, bob = SendLedger(tmp_path, box, ("age1alice",)), SendLedger(tmp_path, box, ("age1bob",))
    usb = SendLedger(tmp_path, "/media/usb", ("age1alice",))
    first, other = _manifest(LAYERS[:2]), _manifest(LAYERS[:1])
    bottom, middle, top = chain_ids(LAYERS)
    thin = _manifest(LAYERS, (OmittedLayer(bottom, first.id), OmittedLayer(middle, first.id)))
    for ledger in (alice, usb):
        ledger.record(first, {})
        ledger.record(thin, {})
    bob.record(first, {})
    bob.record(other, {})

    assert drop_bundles(tmp_path, box, [first.id, "not sent from here"]) == {first.id}
    assert alice.far_side().layers == {top: thin.id}  # what the thin bundle leaned on, too
    assert bob.far_side().layers == {bottom: other.id}  # the same layer, carried by another
    assert usb.far_side().layers == {bottom: first.id, middle: first.id, top: thin.id}
    (summary,) = [
        s for s in summaries(tmp_path) if s.audience == ("age1alice",) and s.destination == box
    ]
    assert summary.bundles == (thin.id,)


def test_a_bundle_recorded_after_its_carriers_refusal_does_not_bring_its_layers_back(
    tmp_path: Path,
) -> None:
    """Found in review: a thin bundle planned on one the drop box then refused, and recorded
    after the refusal was read (a resumed send, or one running meanwhile), credited the
    refused bundle with its layers again, so every later send left them out."""
    ledger = SendLedger(tmp_path, "ftps://sender@box:2121/", ("age1alice",))
    first = _manifest(LAYERS[:2])
    bottom, middle, top = chain_ids(LAYERS)
    ledger.record(first, {})
    thin = _manifest(LAYERS, (OmittedLayer(bottom, first.id), OmittedLayer(middle, first.id)))
    assert ledger.drop({first.id}) == {first.id}
    ledger.record(thin, {})
    assert ledger.far_side().layers == {top: thin.id}


def test_a_layer_the_sender_was_only_told_of_is_read_back(tmp_path: Path) -> None:
    """Found by CI: the ledger check took a layer carried by no bundle of ours (--base, null)
    for a ledger airgap did not write, and refused every later send."""
    ledger = SendLedger(tmp_path, "/media/usb", ("none",))
    bottom, middle, top = chain_ids(LAYERS)
    told = _manifest(LAYERS, (OmittedLayer(bottom, None), OmittedLayer(middle, None)))
    ledger.record(told, {})
    assert ledger.far_side().layers == {bottom: None, middle: None, top: told.id}
    (summary,) = summaries(tmp_path)
    assert summary.bundles == (told.id,)


def test_the_folders_a_ledger_makes_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Found in review: only the last folder was made 0700; those above it took the umask's
    mode (0777 under umask 000), and the next fetch refused the state folder as writable."""
    state = tmp_path / "state" / "airgap" / "sent"
    old = os.umask(0)
    try:
        ledger = SendLedger(state, "ftps://sender@box:2121/", ("age1alice",))
        ledger.record(_manifest(LAYERS), {LAYERS[0]: LayerFile(4096, None)})
    finally:
        os.umask(old)
    for folder in (tmp_path / "state", tmp_path / "state" / "airgap", state):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
