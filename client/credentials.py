"""The drop box password: from AIRGAP_PASSWORD, ~/.netrc (or $NETRC), or a prompt.

Never from argv (it would show in the process list) and never from the URL. Nothing here logs
or prints a password.
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
from pathlib import Path

from airgap.client.ftp import FtpTarget
from airgap.shared.errors import KeyFileError, UsageError


def password_for(target: FtpTarget) -> str:
    if "AIRGAP_PASSWORD" in os.environ:
        return os.environ["AIRGAP_PASSWORD"]
    from_netrc = _netrc(target)
    if from_netrc is not None:
        return from_netrc
    if target.user == "anonymous":
        return "airgap@"
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {target.user}@{target.host}: ")
    raise UsageError(
        f"no password for {target.user}@{target.host}",
        hint="set AIRGAP_PASSWORD, add the host to ~/.netrc, or run on a terminal",
    )


def _netrc(target: FtpTarget) -> str | None:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.exists():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(target.host)
        mode = path.stat().st_mode
    except (netrc.NetrcParseError, OSError) as exc:
        raise KeyFileError(f"{path}: cannot be read as a netrc file") from exc
    if entry is None or (entry[0] and entry[0] != target.user):
        return None
    if mode & 0o077 and entry[2]:  # as ftp(1) does: a password others can read is not used
        raise KeyFileError(
            f"{path} holds a password and others may read or write it",
            hint=f"chmod 600 {path}",
        )
    return entry[2]
