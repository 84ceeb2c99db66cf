"""``airgap user`` through the real CLI: it keeps credentials.txt true and never makes a root."""

from __future__ import annotations

import ftplib
import json
import stat

import pytest

from airgap.server.config import ServeConfig
from tests.conftest import run_airgap
from tests.server.conftest import stor

pytestmark = pytest.mark.timeout(120)


def test_passwd_and_remove_take_stale_passwords_out_of_credentials(serve):
    server = serve("--tls", "off")
    credentials = server.root / "state/credentials.txt"
    old = server.password("sender")
    changed = run_airgap(["user", "passwd", "sender", "--root", server.root])
    assert changed.returncode == 0, changed.stderr
    new = changed.stdout.split("password: ")[1].strip()
    assert old not in credentials.read_text() and new not in credentials.read_text()
    assert f"removed the stale password of sender from {credentials}" in changed.stderr
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    with pytest.raises(KeyError):
        server.password("sender")
    server.ftp("receiver", server.password("receiver")).quit()  # the other line stays true
    server.ftp("sender", new).quit()
    with pytest.raises(ftplib.error_perm):
        server.ftp("sender", old)

    removed = run_airgap(["user", "remove", "receiver", "--root", server.root])
    assert removed.returncode == 0, removed.stderr
    assert f"removed {credentials}" in removed.stderr
    assert not credentials.exists()


def test_passwd_and_remove_end_the_sessions_already_logged_in(serve):
    server = serve("--tls", "off")
    sender, receiver = server.ftp("sender"), server.ftp("receiver")
    stor(sender, "before.bin", b"1")
    added = run_airgap(["user", "add", "alice", "--role", "sender", "--root", server.root])
    assert added.returncode == 0, added.stderr
    stor(sender, "after-add.bin", b"2")  # another account changed: this session goes on
    assert receiver.nlst() == []

    assert run_airgap(["user", "passwd", "sender", "--root", server.root]).returncode == 0
    with pytest.raises(ftplib.error_temp, match="421 Logged out: password changed"):
        stor(sender, "after-passwd.bin", b"3")
    assert run_airgap(["user", "remove", "receiver", "--root", server.root]).returncode == 0
    with pytest.raises(ftplib.error_temp, match="421 Logged out: account removed"):
        receiver.nlst()
    assert sorted(p.name for p in (server.root / "pub/incoming/sender").iterdir()) == [
        "after-add.bin",
        "before.bin",
    ]
    audit = server.audit()
    assert '"event": "logout", "ip": "127.0.0.1", "reason": "password changed"' in audit
    assert '"reason": "account removed", "time"' in audit


def test_user_commands_refuse_a_root_that_serve_never_made(serve, tmp_path):
    missing = tmp_path / "typo"
    cluttered = tmp_path / "home"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("not an appliance")
    commands = (["list"], ["add", "alice", "--role", "sender"], ["passwd", "a"], ["remove", "a"])
    for root in (missing, cluttered):
        for command in commands:
            refused = run_airgap(["user", *command, "--root", root])
            assert refused.returncode == 2, (command, refused.stderr)
            assert f"airgap serve --root {root}" in refused.stderr
    assert not missing.exists()
    assert [p.name for p in cluttered.iterdir()] == ["notes.txt"]

    fresh = tmp_path / "volume"  # an empty directory: accounts before the first start
    fresh.mkdir()
    added = run_airgap(["user", "add", "alice", "--role", "sender", "--root", fresh])
    assert added.returncode == 0, added.stderr
    server = serve("--tls", "off", root=fresh)
    server.ftp("alice", added.stdout.split("password: ")[1].strip()).quit()
    assert not (fresh / "state/credentials.txt").exists()  # no accounts of its own


def test_serve_help_shows_the_default_root():
    helped = run_airgap(["serve", "--help"], env={"COLUMNS": "200"})
    assert helped.returncode == 0
    root_line = next(line for line in helped.stdout.splitlines() if "--root" in line)
    assert f"(default ./{ServeConfig().root})" in root_line


@pytest.mark.parametrize(
    "broken", ["a list for the table", "a name no account may have", "bytes not UTF-8"]
)
def test_a_users_file_edited_wrong_ends_the_sessions_cleanly(serve, broken):
    """Found in review: a users file that parsed but held a list for its table, or a name
    check_name refuses, raised out of the check before each command (a traceback and a
    dropped session at every command, with no logout record)."""
    server = serve("--tls", "off")
    sender = server.ftp("sender")
    stor(sender, "before.bin", b"1")
    path = server.root / "state/users.json"
    users = json.loads(path.read_text())
    if broken == "a list for the table":
        users["users"] = list(users["users"].values())
    elif broken == "a name no account may have":
        users["users"]["Bob Smith"] = users["users"]["sender"]
    path.write_bytes(json.dumps(users).encode() + (b"\xe9" if broken == "bytes not UTF-8" else b""))
    with pytest.raises(ftplib.error_temp, match="421 Logged out: the users file cannot be read"):
        stor(sender, "after.bin", b"2")
    assert "Traceback" not in server.stderr
    assert '"reason": "the users file cannot be read"' in server.audit()


def test_serve_refuses_new_first_accounts_beside_old_credentials(serve, tmp_path):
    """Found in review: with users.json removed to start over, serve wrote new accounts, then
    failed (internal error) on the old credentials.txt; its passwords no longer worked, and
    the new ones were printed nowhere."""
    server = serve("--tls", "off")
    assert server.stop() == 0
    users = server.root / "state/users.json"
    credentials = server.root / "state/credentials.txt"
    users.unlink()
    before = credentials.read_text()
    again = run_airgap(["serve", "--root", server.root, "--listen", "127.0.0.1:0"])
    assert again.returncode == 1, again.stderr
    assert f"{users} is gone, but {credentials} still lists" in again.stderr
    assert "internal error" not in again.stderr
    assert not users.exists() and credentials.read_text() == before
    credentials.unlink()
    fresh = serve("--tls", "off", root=server.root)
    fresh.ftp("sender", fresh.password("sender")).quit()


def test_first_passwords_stay_out_of_output_that_is_not_a_terminal(serve):
    """Found in review: the container's first start wrote both passwords to docker logs (a
    log kept for good, and shipped to wherever logs go)."""
    server = serve("--tls", "off")
    credentials = server.root / "state/credentials.txt"
    assert (
        f"airgap: created accounts sender and receiver; their passwords are in {credentials} "
        "(mode 0600), not in this output, which a log may keep"
    ) in server.stderr
    for role in ("sender", "receiver"):
        assert server.password(role) not in server.stderr


def test_user_commands_at_the_same_time_each_take_effect(serve):
    """Found in review: each command read, changed and wrote users.json whole, with no lock,
    so of six adds at once one or two stayed, and a password change could be undone by an
    add beside it (the new password refused, the old one let in)."""
    from concurrent.futures import ThreadPoolExecutor

    server = serve("--tls", "off")
    old = server.password("sender")
    names = [f"user{i}" for i in range(6)]
    commands = [["user", "add", n, "--role", "receiver", "--root", server.root] for n in names]
    commands.append(["user", "passwd", "sender", "--root", server.root])
    with ThreadPoolExecutor(len(commands)) as pool:
        done = list(pool.map(run_airgap, commands))
    assert [d.returncode for d in done] == [0] * len(commands), [d.stderr for d in done]
    listed = run_airgap(["user", "list", "--root", server.root]).stdout.split()
    assert set(names) <= set(listed)
    new = done[-1].stdout.split("password: ")[1].strip()
    server.ftp("sender", new).quit()
    with pytest.raises(ftplib.error_perm):
        server.ftp("sender", old)
