"""The drop box login: the URL's user, else the netrc's login for the host, else anonymous;
the password from AIRGAP_PASSWORD, the config file's password_file (for its own server alone),
~/.netrc (or $NETRC), or a prompt.

Never from argv (it would show in the process list) and never from the URL. Nothing here logs
or prints a password.
"""

from __future__ import annotations

import getpass
import netrc
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from airgap.client.ftp import FtpTarget
from airgap.shared.errors import KeyFileError, UsageError


def with_login(target: FtpTarget) -> FtpTarget:
    """``target`` with its user: a URL without one takes the netrc's login for the host (as
    ftp(1) and curl do), else ``anonymous``."""
    if target.user:
        return target
    entry = _Netrc.load().entry(target.host)
    return replace(target, user=entry[0] if entry and entry[0] else "anonymous")


def login_for(target: FtpTarget, *, password_file: Path | None = None) -> tuple[FtpTarget, str]:
    """``target`` with its user (:func:`with_login`), and the password."""
    target = with_login(target)
    return target, password_for(target, password_file=password_file)


def password_for(target: FtpTarget, *, password_file: Path | None = None) -> str:
    """AIRGAP_PASSWORD, else the configured ``password_file`` (given only for the configured
    server), else the netrc's, else a prompt."""
    if "AIRGAP_PASSWORD" in os.environ:
        return os.environ["AIRGAP_PASSWORD"]
    if password_file is not None:
        if target.user == "anonymous":  # an anonymous password is logged, as an address
            raise UsageError(
                f"the config's password_file goes with a server URL naming its user, not "
                f"{target.describe()}",
                hint="write the server as ftps://USER@HOST:PORT/",
            )
        return _read_password(password_file)
    from_netrc = _Netrc.load().password(target)
    if from_netrc:
        return from_netrc
    if target.user == "anonymous":
        return "airgap@"
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"password for {target.user}@{target.host}: ")
        except EOFError as exc:  # Ctrl-D
            raise UsageError(f"no password for {target.user}@{target.host}: none typed") from exc
    raise UsageError(
        f"no password for {target.user}@{target.host}",
        hint="set AIRGAP_PASSWORD, add the host to ~/.netrc or a password_file to the config "
        "file, or run on a terminal",
    )


#: The longest password a file may hold (what a line of FTP can carry, and then some).
MAX_PASSWORD = 4096


def _read_password(path: Path) -> str:
    """The first line of ``path``, which only its owner may read, as ftp(1) asks of a netrc."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the open
            raise KeyFileError(f"{path}: not a file")
        with path.open(encoding="utf-8") as handle:
            if os.fstat(handle.fileno()).st_mode & 0o077:
                raise _exposed(path)
            line = handle.readline(MAX_PASSWORD + 1)
    except OSError as exc:
        raise KeyFileError(
            f"{path}: cannot be read as a password file ({exc.strerror or exc})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: cannot be read as a password file (not UTF-8)") from exc
    line = line.rstrip("\r\n")
    if len(line) > MAX_PASSWORD:  # sent cut short, it would only fail the login
        raise KeyFileError(f"{path}: its first line is longer than a password ({MAX_PASSWORD})")
    if not line:
        raise KeyFileError(f"{path}: holds no password on its first line")
    return line


class _Netrc:
    """~/.netrc (or $NETRC), if there is one."""

    def __init__(self, path: Path, parsed: netrc.netrc | None, mode: int) -> None:
        self.path, self._parsed, self._mode = path, parsed, mode

    @classmethod
    def load(cls) -> _Netrc:
        path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
        if not path.exists():
            return cls(path, None, 0)
        try:
            return cls(path, _Strict(str(path)), path.stat().st_mode)
        except (netrc.NetrcParseError, OSError) as exc:
            raise KeyFileError(f"{path}: cannot be read as a netrc file") from exc

    def entry(self, host: str) -> tuple[str, str] | None:
        """The login and password for ``host`` (or the ``default``); either may be ''.
        A host named twice is refused: Python's netrc keeps the last entry, ftp and curl take
        the first (or the one of the URL's user), and which login was meant is a guess."""
        if isinstance(self._parsed, _Strict) and host in self._parsed.hosts.twice:
            raise KeyFileError(
                f"{self.path} has more than one entry for machine {host}",
                hint="keep one (airgap would have to guess which login is meant)",
            )
        found = self._parsed.authenticators(host) if self._parsed else None
        return (found[0], found[2]) if found else None

    def password(self, target: FtpTarget) -> str:
        """The password of ``target``'s user, if the netrc holds it ('' if not)."""
        entry = self.entry(target.host)
        if entry is None or entry[0] not in ("", target.user) or not entry[1]:
            return ""
        if self._mode & 0o077:  # as ftp(1) does: a password others can read is not used
            raise _exposed(self.path)
        return entry[1]


class _Hosts(dict[str, Any]):
    """netrc's table of hosts, which also notes a host whose entry comes again: each entry
    starts by setting its host to ``{}`` (the module's own parse, macros and quotes and all)."""

    def __init__(self) -> None:
        super().__init__()
        self.twice: set[str] = set()

    def __setitem__(self, host: str, value: Any) -> None:
        if value == {} and host in self:
            self.twice.add(host)
        super().__setitem__(host, value)


class _Strict(netrc.netrc):
    hosts: _Hosts

    def _parse(self, file: str, fp: Any, default_netrc: bool) -> None:
        self.hosts = _Hosts()
        super()._parse(file, fp, default_netrc)  # type: ignore[misc]


def _exposed(path: Path) -> KeyFileError:
    return KeyFileError(
        f"{path} holds a password and others may read or write it", hint=f"chmod 600 {path}"
    )
