"""Login bans against a real server: what a success forgives, and connections opened before."""

from __future__ import annotations

import ftplib

import pytest

from airgap.server.limits import LoginGuard
from tests.server.conftest import Server, wait_for

pytestmark = pytest.mark.timeout(120)


def failed_logins(server: Server) -> int:
    return server.audit().count('"event": "login-failed"')


def test_a_success_forgives_only_the_failures_of_its_own_name(serve):
    server = serve("--tls", "off", "--anonymous", "upload", "--max-login-failures", "3")
    client = server.ftp()
    for _ in range(2):  # an insider's own typos, then its login: forgiven
        with pytest.raises(ftplib.error_perm, match="530"):
            client.login("sender", "not the password")
    client.login("sender", server.password("sender"))
    guesser = server.ftp()
    for _ in range(2):  # two guesses at the receiver, then logins that must not forgive them
        with pytest.raises(ftplib.error_perm, match="530"):
            guesser.login("receiver", "a guess")
    server.ftp("anonymous", "x").quit()
    server.ftp("sender").quit()
    with pytest.raises(ftplib.error_temp, match="421"):  # the 3rd guess bans
        server.ftp().login("receiver", "another guess")
    with pytest.raises(ftplib.error_temp, match="421"):
        server.ftp()
    assert '"event": "ban"' in server.audit()
    assert failed_logins(server) == 5


def test_connections_opened_before_a_ban_get_no_more_checks(serve):
    server = serve("--tls", "off", "--max-login-failures", "3")
    opened = [server.ftp() for _ in range(8)]
    for client in opened:
        assert client.sendcmd("USER receiver").startswith("331")
    replies = []
    for client in opened[:-1]:
        try:
            replies.append(client.sendcmd("PASS a-guess"))
        except ftplib.all_errors as exc:
            replies.append(str(exc))
    assert [r[:3] for r in replies] == ["530", "530"] + ["421"] * 5, replies
    assert "try again later" in replies[-1]
    with pytest.raises(ftplib.error_temp, match="421"):  # not even the right password
        opened[-1].sendcmd(f"PASS {server.password('receiver')}")
    assert failed_logins(server) == 3
    assert '"event": "login",' not in server.audit()


def test_a_banned_ip_connecting_in_a_loop_is_recorded_once_and_counted_at_the_end(serve):
    server = serve("--tls", "off", "--max-login-failures", "1", "--ban-seconds", "4")
    with pytest.raises(ftplib.error_temp, match="421"):
        server.ftp().login("receiver", "a guess")
    for _ in range(30):
        with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
            server.ftp()
    banned = '"reason": "banned"'
    assert server.audit().count(banned) == 1
    assert '"count": 1, "event": "refused"' in server.audit()
    assert wait_for(lambda: '"count": 29, "event": "refused"' in server.audit())
    assert server.audit().count(banned) == 2
    # stderr's copy comes a moment after the audit line (a CI run read it in between)
    assert wait_for(lambda: server.stderr.count("reason=banned") == 2)
    server.ftp("receiver").quit()  # the ban is over


def test_the_refusals_of_a_long_ban_are_counted_once_a_minute():
    now = [0.0]
    guard = LoginGuard(max_failures=1, ban_seconds=3600, clock=lambda: now[0])
    until = guard.failed("10.0.0.1", "receiver")
    assert until == 3600
    reports = []
    for _ in range(150):  # one refused connection a second
        reports.append(guard.refused("10.0.0.1"))
        now[0] += 1
    assert [r for r in reports if r] == [1, 60, 60]
    assert guard.ban_over("10.0.0.1", until) == 29
    assert not guard.banned("10.0.0.1")


def test_failures_that_count_no_more_are_swept_out():
    """One failed login from each of many addresses that never come back must not grow the
    table for ever (found in review: an IPv6 host has addresses to spare)."""
    now = [0.0]
    guard = LoginGuard(max_failures=5, ban_seconds=600, clock=lambda: now[0])
    for n in range(3000):
        guard.failed(f"2001:db8::{n:x}", "receiver")
        now[0] += 0.1  # 300 s in all
    assert len(guard._failures) == 3000
    now[0] = 600 + 149.95  # the first half counts no more
    guard.failed("192.0.2.7", "receiver")
    assert len(guard._failures) == 1500 + 1
    now[0] = 1400.0  # a sweep at most once per ban_seconds: the last was at 749.95
    guard.failed("192.0.2.8", "receiver")
    assert len(guard._failures) == 1
    for _ in range(4):  # a failure still within the window counts after any sweep
        guard.failed("192.0.2.8", "receiver")
    assert guard.banned("192.0.2.8")


def test_failures_older_than_the_ban_count_no_more():
    """Typos made far apart never add up to a ban (mutation testing: an ageless window went
    unseen)."""
    now = [0.0]
    guard = LoginGuard(max_failures=3, ban_seconds=10, clock=lambda: now[0])
    for _ in range(5):
        assert guard.failed("192.0.2.1", "receiver") is None
        now[0] += 6  # each failure older than the ban's length by the third one after it
    assert not guard.banned("192.0.2.1")


def test_the_end_of_an_earlier_ban_does_not_end_a_later_one():
    """A ban's timer reports it over only if it is still that ban (mutation testing)."""
    now = [0.0]
    guard = LoginGuard(max_failures=1, ban_seconds=10, clock=lambda: now[0])
    first = guard.failed("192.0.2.1", "receiver")
    now[0] = 11.0  # the first ban is over; its timer has not run yet
    second = guard.failed("192.0.2.1", "receiver")
    assert first is not None and second is not None and second > first
    assert guard.ban_over("192.0.2.1", first) == 0
    assert guard.banned("192.0.2.1")
    assert guard.ban_over("192.0.2.1", second) == 0
    assert not guard.banned("192.0.2.1")
