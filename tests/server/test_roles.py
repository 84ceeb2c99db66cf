"""Roles against a real server with Python's ftplib: what each may do and must be refused."""

from __future__ import annotations

import ftplib
import socket
import stat
import time
from pathlib import Path

import pytest

from airgap.client.ftp import FtpTarget, FtpTransport
from airgap.shared.errors import TransferError
from tests.server.conftest import retr, stor, wait_for


def test_first_start_makes_accounts_certificate_and_private_files(serve):
    server = serve("--tls", "off")
    state = server.root / "state"
    for secret in ("credentials.txt", "users.json", "tls/key.pem"):
        assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600
    assert server.password("sender") not in (state / "users.json").read_text()
    assert "certificate sha256:" not in server.stderr  # tls off: no certificate line
    assert "warning: no --trusted-signer: bundles signed by any key are published" in server.stderr
    assert server.password("sender") not in server.audit()


def test_sender_uploads_but_cannot_read_overwrite_delete_or_escape(serve):
    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "data.bin", b"x" * 1000)
    assert client.nlst() == ["data.bin"]
    for command in ("RETR data.bin", "DELE data.bin", "MKD sub", "SITE CHMOD 777 data.bin"):
        with pytest.raises(ftplib.error_perm):
            client.sendcmd(command) if not command.startswith("RETR") else retr(client, "data.bin")
    with pytest.raises(ftplib.error_perm, match="550"):
        stor(client, "data.bin", b"y")  # never overwritten
    with pytest.raises(ftplib.error_perm):
        client.sendcmd("RNFR data.bin")  # completed names are never renamed
    client.cwd("..")  # stays in its own area
    assert client.pwd() == "/"
    assert client.nlst() == ["data.bin"]
    with pytest.raises(ftplib.error_perm):
        client.cwd("/pub")
    assert (server.root / "pub/incoming/sender/data.bin").read_bytes() == b"x" * 1000


def test_sender_renames_its_partial_only_to_the_final_name(serve):
    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "f.bin.part", b"abc")
    with pytest.raises(ftplib.error_perm):
        client.rename("f.bin.part", "other.bin")
    client.rename("f.bin.part", "f.bin")
    stor(client, "g.part", b"1")
    client.delete("g.part")  # an unfinished upload may be abandoned
    assert client.nlst() == ["f.bin"]


def test_receiver_cannot_upload_and_sees_only_outgoing(serve):
    server = serve("--tls", "off")
    sender = server.ftp("sender")
    stor(sender, "secret.bin", b"s")
    receiver = server.ftp("receiver")
    assert receiver.nlst() == []
    with pytest.raises(ftplib.error_perm, match="550"):
        stor(receiver, "x.bin", b"x")
    with pytest.raises(ftplib.error_perm):
        receiver.cwd("/pub/incoming/sender")
    with pytest.raises(ftplib.error_perm):
        retr(receiver, "../incoming/sender/secret.bin")
    assert not (server.root / "pub/outgoing/x.bin").exists()


def test_anonymous_is_off_by_default(serve):
    server = serve("--tls", "off")
    with pytest.raises(ftplib.error_perm, match="530"):
        server.ftp("anonymous", "me@example.org")


def test_anonymous_upload_writes_once_and_never_lists(serve):
    server = serve("--tls", "off", "--anonymous", "upload")
    client = server.ftp("anonymous", "x@y")
    client.cwd("pub/incoming")
    stor(client, "drop.bin", b"1234")
    with pytest.raises(ftplib.error_perm):
        stor(client, "drop.bin", b"5")
    with pytest.raises(ftplib.error_perm):
        client.nlst()
    with pytest.raises(ftplib.error_perm):
        retr(client, "drop.bin")
    assert (server.root / "pub/incoming/drop.bin").read_bytes() == b"1234"


def test_anonymous_upload_cannot_write_into_an_empty_file_either(serve):
    """Found in review: a plain STOR onto a file another client left empty (its upload broke
    before the first byte) wrote into it, a resume that upload-only anonymous may not do."""
    server = serve("--tls", "off", "--anonymous", "upload")
    first, second = server.ftp("anonymous", "a@b"), server.ftp("anonymous", "c@d")
    first.cwd("pub/incoming")
    second.cwd("pub/incoming")
    stor(first, "drop.bin", b"")
    with pytest.raises(ftplib.error_perm, match="550 Not allowed: anonymous may not resume"):
        stor(second, "drop.bin", b"not theirs to write")
    assert (server.root / "pub/incoming/drop.bin").read_bytes() == b""
    sender = server.ftp("sender")  # a sender's own empty partial is a resume it may make
    stor(sender, "data.bin.part", b"")
    stor(sender, "data.bin.part", b"now")
    assert (server.root / "pub/incoming/sender/data.bin.part").read_bytes() == b"now"


@pytest.mark.parametrize(
    "name",
    ["a\u2028b.part", "a\u2029b.part", "a\x85b.part", "a\u202eb.part", "a\u2066b.part"],
)
def test_names_a_terminal_would_not_print_as_they_are_are_refused(serve, name):
    """Found in review: C1 controls, line separators and bidirectional overrides were stored,
    and a name reaches the server's stderr and other clients' listings as it is."""
    server = serve("--tls", "off")
    client = server.ftp("sender")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        stor(client, name, b"x")
    # Letters of any script, spaces of any kind, joiners, and emoji newer than Python's data
    fine = [
        "caf\u00e9 \u65e5\u672c.part",
        "Screenshot 10.22.33\u202fAM.png.part",
        "a\u00a0b\u3000c.part",
        "\u0645\u06cc\u200c\u0631\u0648\u0645.part",
        "\U0001f468\u200d\U0001f4bb\U0001fae8.part",
    ]
    for name in fine:
        stor(client, name, b"x")
    assert sorted(client.nlst()) == sorted(fine)


def test_anonymous_read_write_cannot_tell_a_senders_area_from_a_free_name(serve):
    """Found in review: in read-write mode, SIZE, MDTM, MLST, LIST, RETR... on a sender's area
    (a directory) answered "not allowed" and on a free name "no such file": anyone could try
    names until the senders' showed."""
    server = serve("--tls", "off", "--anonymous", "read-write")
    server.ftp("sender").quit()  # its area is made at its first login
    assert (server.root / "pub/incoming/sender").is_dir()
    anonymous = server.ftp("anonymous", "x@y")
    anonymous.voidcmd("TYPE I")

    def reply(command: str) -> str:
        try:
            if command.split()[0] in ("RETR", "LIST", "NLST", "APPE"):
                anonymous.sendcmd("PASV")
            return anonymous.sendcmd(command)
        except ftplib.all_errors as exc:
            return str(exc)

    commands = ["SIZE", "MDTM", "MLST", "STAT", "HASH", "LIST", "NLST", "RETR", "APPE", "CWD"]
    commands += ["RNFR", "DELE", "RMD", "MKD"]
    for command in commands:
        area, free = (
            reply(f"{command} pub/incoming/sender"),
            reply(f"{command} pub/incoming/nobody"),
        )
        assert area == free and area.startswith("5"), (command, area, free)
    assert not (server.root / "pub/incoming/nobody").exists()
    stor(anonymous, "pub/incoming/book.tar", b"the book's flow still works")
    assert retr(anonymous, "pub/incoming/book.tar") == b"the book's flow still works"


def test_wrong_passwords_lead_to_a_ban(serve):
    server = serve("--tls", "off", "--max-login-failures", "3", "--ban-seconds", "20")
    for attempt in range(3):
        client = server.ftp()
        with pytest.raises(ftplib.error_temp if attempt == 2 else ftplib.error_perm):
            client.login("sender", "wrong password")
        client.close()
    with pytest.raises(ftplib.error_temp, match="421"):  # refused at once, password or not
        server.ftp("sender")
    assert '"event": "ban"' in server.audit()
    assert "wrong password" not in server.audit() + server.stderr
    # The CLI, banned, says so at once: no retries (each would be refused, or extend the ban).
    from tests.conftest import run_airgap

    started = time.monotonic()
    listed = run_airgap(
        ["ls", "--server", f"ftp://sender@127.0.0.1:{server.port}/"],
        env={"AIRGAP_PASSWORD": server.password("sender")},
    )
    assert listed.returncode == 4, listed.stderr
    assert "refused after failed logins from here" in listed.stderr
    assert "wait for the ban to end" in listed.stderr
    assert time.monotonic() - started < 10  # six attempts with backoff take about 31 s
    # Refusals in a ban are counted, not a record each: the CLI's one attempt shows at its end.
    assert wait_for(lambda: server.audit().count('"reason": "banned"') == 2, timeout=40)
    assert server.audit().count('"count": 1, "event": "refused"') == 2


def test_anonymous_uploads_cannot_take_a_senders_area(serve, tmp_path):
    """Found in review: an anonymous upload named as a sender who had not logged in yet took
    the place of its area, and the sender's right password then counted as failed logins
    until a ban."""
    from tests.conftest import run_airgap

    server = serve("--tls", "off", "--anonymous", "upload")
    root = str(server.root)
    added = run_airgap(["user", "add", "bob", "--role", "sender", "--root", root])
    assert added.returncode == 0, added.stderr
    password = added.stdout.split("password: ")[1].strip()
    anonymous = server.ftp("anonymous", "x@y")
    with pytest.raises(ftplib.error_perm, match="553") as taken:
        stor(anonymous, "pub/incoming/bob", b"squat")
    # The same for a name no account has (yet): the refusal tells no sender's name.
    with pytest.raises(ftplib.error_perm, match="553") as free:
        stor(anonymous, "pub/incoming/dave", b"squat")
    assert str(taken.value) == str(free.value)
    for area in ("bob", "dave"):  # nor does entering one
        with pytest.raises(ftplib.error_perm, match=r"^550 Not allowed: anonymous may not enter"):
            anonymous.cwd(f"/pub/incoming/{area}")
    assert not (server.root / "pub/incoming/dave").exists()
    stor(anonymous, "pub/incoming/dave.txt", b"a name no account can have")
    server.ftp("bob", password).quit()
    assert (server.root / "pub/incoming/bob").is_dir()

    # A file already there (left before the account was made): not a wrong password.
    (server.root / "pub/incoming/carol").write_bytes(b"old upload")
    refused = run_airgap(["user", "add", "carol", "--role", "sender", "--root", root])
    assert refused.returncode == 2 and "is a file (an anonymous upload?)" in refused.stderr
    (server.root / "pub/incoming/carol").unlink()
    added = run_airgap(["user", "add", "carol", "--role", "sender", "--root", root])
    password = added.stdout.split("password: ")[1].strip()
    (server.root / "pub/incoming/carol").write_bytes(b"placed behind airgap's back")
    for _ in range(3):
        with pytest.raises(ftplib.error_temp, match="421 This account cannot be served now"):
            server.ftp("carol", password)
    assert '"event": "ban"' not in server.audit() and "login-failed" not in server.audit()
    assert "is not a directory" in server.stderr


def test_user_commands_change_who_logs_in(serve, tmp_path):
    from tests.conftest import run_airgap

    server = serve("--tls", "off")
    root = str(server.root)
    added = run_airgap(["user", "add", "alice", "--role", "sender", "--root", root])
    assert added.returncode == 0, added.stderr
    password = added.stdout.split("password: ")[1].strip()
    server.ftp("alice", password).quit()
    # Told before a password is read, not "password too short" (walkthrough).
    add_again = ["user", "add", "alice", "--role", "sender", "--password-stdin", "--root", root]
    again = run_airgap(add_again)
    assert again.returncode == 2 and "user 'alice' exists" in again.stderr, again.stderr
    listed = run_airgap(["user", "list", "--root", root])
    assert "alice\tsender" in listed.stdout
    assert run_airgap(["user", "remove", "alice", "--root", root]).returncode == 0
    with pytest.raises(ftplib.error_perm):
        server.ftp("alice", password)


def test_hostile_lines_and_paths_are_refused_and_the_server_keeps_serving(serve):
    server = serve("--tls", "off")
    outside = server.root.parent / "outside.txt"
    outside.write_text("top secret")
    area = server.root / "pub/incoming/sender"
    client = server.ftp("sender")
    (area / "link.txt").symlink_to(outside)
    with pytest.raises(ftplib.error_perm):
        client.size("link.txt")
    with pytest.raises(ftplib.error_perm):
        stor(client, "link.txt", b"overwrite?", rest=3)
    assert "link.txt" not in client.nlst()
    for path in ("../../../../etc/passwd", "/etc/passwd"):
        with pytest.raises(ftplib.error_perm):
            client.size(path)
    with pytest.raises(ftplib.error_perm, match="501"):
        client.sendcmd("SIZE a\0b")
    with pytest.raises(ftplib.error_perm, match="500"):
        client.sendcmd("SIZE " + "a" * 3000)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.recv(1024)
    raw.sendall(b"USER sender\rPASS x\r\n")  # a bare CR inside a line
    assert raw.recv(1024).startswith(b"501")
    raw.close()
    assert outside.read_text() == "top secret"
    assert client.voidcmd("NOOP").startswith("200")


def test_port_to_another_address_or_a_privileged_port_is_refused(serve):
    server = serve("--tls", "off")
    client = server.ftp("receiver")
    with pytest.raises(ftplib.error_perm, match="501"):
        client.sendcmd("PORT 10,0,0,1,200,10")
    with pytest.raises(ftplib.error_perm, match="501"):
        client.sendcmd("PORT 127,0,0,1,0,80")


def test_rest_below_at_past_negative_and_garbage(serve):
    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "r.bin", b"0123456789")
    stor(client, "r.bin", b"AB", rest=4)  # below: cut at 4, no old tail kept
    assert (server.root / "pub/incoming/sender/r.bin").read_bytes() == b"0123AB"
    stor(client, "r.bin", b"CD", rest=6)  # at the size: an append
    assert (server.root / "pub/incoming/sender/r.bin").read_bytes() == b"0123ABCD"
    with pytest.raises(ftplib.error_perm, match="554"):
        stor(client, "r.bin", b"x", rest=100)
    for bad in ("-1", "abc", "1e3"):
        with pytest.raises(ftplib.error_perm, match="501"):
            client.sendcmd(f"REST {bad}")
    assert (server.root / "pub/incoming/sender/r.bin").read_bytes() == b"0123ABCD"


def test_two_writers_on_one_name(serve):
    server = serve("--tls", "off")
    first, second = server.ftp("sender"), server.ftp("sender")
    first.voidcmd("TYPE I")
    conn = first.transfercmd("STOR same.bin")
    conn.sendall(b"a" * 1000)
    time.sleep(0.3)
    with pytest.raises(ftplib.error_temp, match="450"):
        stor(second, "same.bin", b"b", rest=0) if False else second.storbinary(
            "APPE same.bin", __import__("io").BytesIO(b"b")
        )
    conn.close()
    first.voidresp()
    assert (server.root / "pub/incoming/sender/same.bin").read_bytes() == b"a" * 1000


def test_hash_with_range_on_readable_files_only(serve):
    server = serve("--tls", "off")
    client = server.ftp("sender")
    stor(client, "h.bin", b"hello world")
    import hashlib

    whole = client.sendcmd("HASH h.bin").split()
    assert whole[:3] == ["213", "SHA-256", "0-10"]
    assert whole[3] == hashlib.sha256(b"hello world").hexdigest()
    client.sendcmd("RANG 0 4")
    part = client.sendcmd("HASH h.bin").split()
    assert part[3] == hashlib.sha256(b"hello").hexdigest()
    assert client.sendcmd("OPTS HASH SHA-256").startswith("200")
    with pytest.raises(ftplib.error_perm, match="504"):
        client.sendcmd("OPTS HASH MD5")
    receiver = server.ftp("receiver")
    with pytest.raises(ftplib.error_perm):
        receiver.sendcmd("HASH ../incoming/sender/h.bin")


def test_sigterm_stops_cleanly(serve):
    server = serve("--tls", "off")
    server.ftp("sender").quit()
    assert server.stop() == 0
    assert '"event": "stop"' in server.audit()
    assert Path(server.root / "pub/incoming/sender").is_dir()


def test_a_second_appliance_on_the_same_root_is_refused(serve):
    import subprocess
    import sys

    server = serve("--tls", "off")
    where = ["--root", str(server.root), "--listen", "127.0.0.1:0", "--tls", "off"]
    second = subprocess.run(
        [sys.executable, "-m", "airgap.client", "serve", *where],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1, second.stderr
    assert f"another airgap serve is running on {server.root}" in second.stderr
    server.ftp("sender").voidcmd("NOOP")  # the first serves on


def _reply(client: ftplib.FTP, command: str) -> str:
    try:
        return client.sendcmd(command)
    except ftplib.Error as exc:
        return str(exc)


def test_a_refused_path_gets_one_reply_whether_or_not_it_exists(serve):
    """Found in review: STOR looked at the disk before the policy, so an anonymous upload to
    a directory anywhere under the root got "550 Not a regular file." where a missing name got
    "Not allowed", which told which directories (and senders' areas) exist."""
    server = serve("--tls", "off", "--anonymous", "upload")
    server.ftp("sender").quit()  # its area exists now
    assert (server.root / "pub/incoming/sender").is_dir()
    client = server.ftp("anonymous", "x@y")
    there = ("/state/tls", "/state/users.json", "/pub/outgoing", "/pub/incoming/sender/x")
    missing = "/state/nosuch"
    for command in ("STOR", "APPE", "RETR", "SIZE", "MDTM", "DELE", "RNFR", "HASH", "MLST"):
        refused = _reply(client, f"{command} {missing}")
        assert refused.startswith("550 Not allowed"), (command, refused)
        for path in there:
            assert _reply(client, f"{command} {path}") == refused, (command, path)
    client.voidcmd("TYPE I")
    client.sendcmd("REST 4")
    refused = _reply(client, f"STOR {missing}")
    client.sendcmd("REST 4")
    assert _reply(client, "STOR /state/users.json") == refused
    # An account's name is refused alike, whether its area was made yet or not.
    assert _reply(client, "STOR /pub/incoming/sender") == _reply(
        client, "STOR /pub/incoming/receiver"
    )
    assert not (server.root / "pub/incoming/receiver").exists()


def test_the_clients_delete_of_a_file_gone_is_done_and_a_refusal_stands(serve):
    """airgap's FTP client: a DELE answered 550 for a file that is not there (a retry after a
    lost reply, another receiver's --consume) is done; one refused for a file there fails."""
    server = serve("--tls", "off")
    stor(server.ftp("sender"), "kept.bin", b"k")
    stor(server.ftp("sender"), "gone.part", b"g")
    target = FtpTarget.parse(f"ftp://sender@127.0.0.1:{server.port}/")
    client = FtpTransport(target, server.password("sender"), timeout=20)
    client.delete("gone.part")
    client.delete("gone.part")
    client.delete("never-there.part")
    with pytest.raises(TransferError, match=r"deleting kept\.bin: refused by the server"):
        client.delete("kept.bin")
    client.close()
    assert sorted(p.name for p in (server.root / "pub/incoming/sender").iterdir()) == ["kept.bin"]


def test_receiving_with_a_senders_account_is_said_not_taken_for_nothing_new(
    serve, tmp_path, keydir
):
    """Found in a walkthrough: fetch and ls with a sender's account said "nothing to do" and
    "no published bundles" (its own area is all a sender sees), exit 0, for ever."""
    from tests.conftest import run_airgap

    server = serve("--tls", "off")
    url = f"ftp://sender@127.0.0.1:{server.port}/"
    env = {"AIRGAP_PASSWORD": server.password("sender"), "XDG_CACHE_HOME": str(tmp_path)}
    trust = ["--trust", keydir / "signing.pub"]
    for command in (["ls"], ["fetch", "--output-dir", tmp_path / "out"], ["verify"]):
        said = run_airgap([*command, "--server", url, *trust], env=env)
        assert said.returncode == 2, said.stderr
        assert f"{url} is a sender's account: it sees no published bundle" in said.stderr
    env["AIRGAP_PASSWORD"] = server.password("receiver")
    url = f"ftp://receiver@127.0.0.1:{server.port}/"
    listed = run_airgap(["ls", "--server", url, *trust], env=env)
    assert listed.returncode == 0 and "no published bundles" in listed.stderr, listed.stderr


@pytest.mark.parametrize("attempt", range(3))
def test_two_appliances_started_at_once_on_a_new_root_one_is_refused(tmp_path, attempt):
    """Found in review: the second took the first one's new users.json, not yet written,
    for a lost one, and told the operator to remove credentials.txt, which held the first
    one's live passwords."""
    import subprocess
    import sys

    root = tmp_path / "root"
    where = ["--root", str(root), "--listen", "127.0.0.1:0", "--tls", "off"]
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "airgap.client", "serve", *where],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in both) and time.monotonic() < deadline:
            time.sleep(0.05)
        (refused,) = [p for p in both if p.poll() is not None]
        (running,) = [p for p in both if p is not refused]
        assert running.poll() is None  # the other serves on
        assert refused.stderr is not None
        message = refused.stderr.read()
        assert refused.returncode == 1, message
        assert f"another airgap serve is running on {root}" in message
        assert "credentials.txt" not in message
    finally:
        for process in both:
            process.terminate()
            process.wait(timeout=30)
            if process.stderr is not None:
                process.stderr.close()
    assert (root / "state/credentials.txt").exists()
