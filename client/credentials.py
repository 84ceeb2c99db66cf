"""The drop box login: the URL's user, else the netrc's login for the host, else anonymous;
the password from AIRGAP_PASSWORD, ~/.netrc (or $NETRC), or a prompt.

Never from argv (it would show in the process list) and never from the URL. Nothing here logs
or prints a password.
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
from dataclasses import replace
from pathlib import Path

from airgap.client.ftp import FtpTarget
from airgap.shared.errors import KeyFileError, UsageError


def login_for(target: FtpTarget) -> tuple[FtpTarget, str]:
    """``target`` with its user (as ftp(1) and curl pick one for a URL without), and the
    password."""
    if not target.user:
        entry = _netrc(target.host)
        target = replace(target, user=entry[0] if entry and entry[0] else "anonymous")
    return target, password_for(target)


def password_for(target: FtpTarget) -> str:
    if "AIRGAP_PASSWORD" in os.environ:
        return os.environ["AIRGAP_PASSWORD"]
    entry = _netrc(target.host)
    if entry is not None and entry[0] in ("", target.user) and entry[1]:
        return entry[1]
    if target.user == "anonymous":
        return "airgap@"
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"password for {target.user}@{target.host}: ")
        except EOFError as exc:  # Ctrl-D
            raise UsageError(f"no password for {target.user}@{target.host}: none typed") from exc
    raise UsageError(
        f"no password for {target.user}@{target.host}",
        hint="set AIRGAP_PASSWORD, add the host to ~/.netrc, or run on a terminal",
    )


def _netrc(host: str) -> tuple[str, str] | None:
    """The netrc's login and password for ``host`` (or its ``default``), either may be ''."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.exists():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
        mode = path.stat().st_mode
    except (netrc.NetrcParseError, OSError) as exc:
        raise KeyFileError(f"{path}: cannot be read as a netrc file") from exc
    if entry is None:
        return None
    if mode & 0o077 and entry[2]:  # as ftp(1) does: a password others can read is not used
        raise KeyFileError(
            f"{path} holds a password and others may read or write it",
            hint=f"chmod 600 {path}",
        )
    return entry[0], entry[2]
