"""The appliance's rules for bundles and areas that no other test held: replays under another
id, hidden names, renames, deletes and quotas (found by mutating each check)."""

from __future__ import annotations

from airgap.shared.ids import new_bundle_id
from tests.server.conftest import quarantined, wait_for
from tests.server.test_publish_and_clients import make_bundle, payload_of, upload_bundle


def test_a_manifest_under_another_bundles_name_goes_to_quarantine(serve, tmp_path, keyset, keydir):
    """A sender (no signing key needed) uploads a genuine signed bundle, its manifest and
    signature under a new id: a replay the receivers would take for a bundle never seen."""
    server = serve("--tls", "off", "--trusted-signer", str(keydir / "signing.pub"))
    bundle_id, files = make_bundle(tmp_path, keyset)
    renamed = new_bundle_id()
    files = {
        (n if n == payload_of(files) else n.replace(bundle_id, renamed)): data
        for n, data in files.items()
    }
    upload_bundle(server, files)
    assert wait_for(lambda: quarantined(server))
    (held,) = quarantined(server)
    assert held.name.startswith(renamed)
    assert "id does not match" in (held / "reason.txt").read_text()
    assert not any((server.root / "pub/outgoing").iterdir())


def test_a_payload_longer_than_signed_is_quarantined_as_such(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    _, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files, payload=files[payload_of(files)] + b"\0")
    assert wait_for(lambda: quarantined(server))
    (held,) = quarantined(server)
    assert "longer than the manifest" in (held / "reason.txt").read_text()
    assert not any((server.root / "pub/outgoing").iterdir())


def test_the_session_file_system_opens_no_link(tmp_path):
    """RETR opens what the policy judged: a link swapped in after the check is not followed."""
    import pytest

    from airgap.server.ftp.fs import AirgapFS

    (tmp_path / "secret").write_bytes(b"not for receivers")
    (tmp_path / "bundle").symlink_to(tmp_path / "secret")
    fs = AirgapFS(str(tmp_path), None)
    with pytest.raises(OSError):
        fs.open(str(tmp_path / "bundle"), "rb").close()
    with fs.open(str(tmp_path / "secret"), "rb") as handle:
        assert handle.read() == b"not for receivers"


def test_a_rename_never_leaves_its_directory():
    """Redundant today (RNFR and RNTO are each judged in the sender's own area), but the rule
    says so itself and nothing held it."""
    from airgap.server.policy import rename_allowed

    assert rename_allowed(("pub", "incoming", "a", "x.part"), ("pub", "incoming", "a", "x"))
    assert not rename_allowed(("pub", "incoming", "a", "x.part"), ("pub", "incoming", "b", "x"))
    assert not rename_allowed(("pub", "incoming", "a", "x.part"), ("pub", "outgoing", "x"))


def test_anonymous_never_reaches_into_outgoing_by_a_full_path(serve):
    """Anonymous may act on plain files directly in pub/incoming: pub/outgoing (as deep, and
    never entered) holds the published bundles, which it must neither read, extend nor add to."""
    import ftplib

    import pytest

    from tests.server.conftest import retr, stor

    server = serve("--tls", "off", "--anonymous", "read-write")
    published = server.root / "pub/outgoing/published.bin"
    published.write_bytes(b"a published file")
    anonymous = server.ftp("anonymous", "x@y")
    with pytest.raises(ftplib.error_perm, match="Not allowed"):
        retr(anonymous, "/pub/outgoing/published.bin")
    with pytest.raises(ftplib.error_perm, match="Not allowed"):
        stor(anonymous, "/pub/outgoing/planted.bin", b"not a bundle")
    with pytest.raises(ftplib.error_perm, match="Not allowed"):
        anonymous.sendcmd("SIZE /pub/outgoing/published.bin")
    anonymous.quit()
    assert sorted(p.name for p in published.parent.iterdir()) == ["published.bin"]
    assert published.read_bytes() == b"a published file"
    stor(server.ftp("anonymous", "x@y"), "/pub/incoming/fine.bin", b"where anonymous writes")


def test_the_policy_keeps_each_role_in_its_own_directory():
    """The sessions are rooted in their areas too; the policy must hold on its own."""
    from airgap.server.config import AnonymousMode
    from airgap.server.policy import Op, Principal, decide
    from airgap.server.users import Role

    alice = Principal("alice", Role.SENDER)
    receiver = Principal("receiver", Role.RECEIVER)
    anonymous = Principal("anonymous", None, AnonymousMode.READ_WRITE)
    assert decide(alice, Op.CREATE, ("pub", "incoming", "alice", "x.part")).allowed
    for op in (Op.CREATE, Op.STAT, Op.RESUME, Op.RENAME_TO):
        assert not decide(alice, op, ("pub", "incoming", "bob", "x.part")).allowed
    assert not decide(receiver, Op.READ, ("pub", "incoming", "x.bin")).allowed
    assert not decide(receiver, Op.DELETE, ("pub", "incoming", "x.bin")).allowed
    for op in (Op.CREATE, Op.READ, Op.RESUME, Op.STAT):
        assert not decide(anonymous, op, ("pub", "outgoing", "x.bin")).allowed
    assert decide(anonymous, Op.READ, ("pub", "incoming", "x.bin")).allowed


def test_a_rename_never_replaces_a_completed_file(serve):
    import ftplib

    import pytest

    from tests.server.conftest import stor

    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "f.bin", b"completed")
    stor(client, "f.bin.part", b"other bytes")
    with pytest.raises(ftplib.error_perm, match="550"):
        client.rename("f.bin.part", "f.bin")
    client.quit()
    area = server.root / "pub/incoming/sender"
    assert (area / "f.bin").read_bytes() == b"completed"
    assert (area / "f.bin.part").read_bytes() == b"other bytes"


def test_a_partial_file_being_uploaded_is_not_deleted_under_its_upload(serve):
    import ftplib

    import pytest

    from tests.server.conftest import begin_stor, wait_for

    server = serve("--tls", "off")
    writer = server.ftp("sender")
    writer.voidcmd("TYPE I")
    conn = begin_stor(writer, "x.part")
    conn.sendall(b"a" * 1000)
    target = server.root / "pub/incoming/sender/x.part"
    assert wait_for(lambda: target.exists() and target.stat().st_size == 1000)
    other = server.ftp("sender")
    with pytest.raises(ftplib.error_temp, match="450"):
        other.delete("x.part")
    conn.sendall(b"b" * 1000)
    conn.close()
    assert writer.voidresp().startswith("226")
    assert target.read_bytes() == b"a" * 1000 + b"b" * 1000
    other.delete("x.part")  # once the upload is over, it may go
    assert not target.exists()


def test_a_full_area_refuses_an_upload_before_its_data_connection(serve):
    """At its quota, an area's next STOR is refused at once (552), not left to fail on its
    first byte: an empty upload would otherwise add a file to a full area."""
    import ftplib

    import pytest

    from tests.server.conftest import stor

    server = serve("--tls", "off", "--quota-bytes", "100000")
    client = server.ftp("sender")
    stor(client, "full.part", b"z" * 100_000)
    with pytest.raises(ftplib.error_perm, match="552 Quota exceeded"):
        stor(client, "empty.part", b"")
    assert not (server.root / "pub/incoming/sender/empty.part").exists()


def test_a_sender_cannot_store_a_hidden_name(serve):
    import ftplib

    import pytest

    from tests.server.conftest import stor

    server = serve("--tls", "off")
    client = server.ftp("sender")
    for name in (".hidden", ".x.part"):
        with pytest.raises(ftplib.error_perm, match="Not allowed"):
            stor(client, name, b"x")
    assert not any((server.root / "pub/incoming/sender").iterdir())
