"""Where bundles go and come from: a directory, or an FTP(S) drop box with a local spool.

The CLI describes a place with ``--to``/``--from DIR`` or ``--server URL`` (and the pinned
certificate); this module turns that into a transport. Remote transports are always spooled
(see :mod:`airgap.client.spool`), so every transfer to or from a drop box is resumable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from airgap.client.credentials import login_for, with_login
from airgap.client.ftp import FtpTarget, FtpTransport, check_pin
from airgap.client.spool import Backoff, SpooledTransport, cache_dir
from airgap.client.terminal import say
from airgap.client.transport import DirectoryTransport, Transport
from airgap.shared.errors import StorageError, UsageError

#: A scheme and a colon, as a URL starts (a path makes "ftps://" into "ftps:/").
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


@dataclass(frozen=True)
class Place:
    directory: Path | None = None
    server: str | None = None
    fingerprint: str | None = None
    password_file: Path | None = None  # the configured server's, given only with it

    def check(self, flag: str) -> None:
        if (self.directory is None) == (self.server is None):
            raise UsageError(
                f"give exactly one of {flag} DIR and --server URL",
                hint=f"{flag} /media/usb for removable media, --server ftps://user@host:2121/ "
                "for a drop box",
            )
        if self.server is not None:
            target = FtpTarget.parse(self.server)
            if self.fingerprint and target.scheme == "ftp":
                raise UsageError(
                    "--tls-fingerprint pins the certificate of an ftps:// server; this URL is "
                    "ftp://",
                    hint="use ftps://, which the pin then checks",
                )
            check_pin(target, self.fingerprint)
        if self.directory is not None and _URL.match(str(self.directory)):
            # Not echoed: a URL may carry a password (found in review).
            raise UsageError(
                f"{flag} takes a directory, and this looks like a URL",
                hint="a drop box goes with --server URL (its password never in the URL)",
            )
        if self.directory is not None and not self.directory.is_dir():
            if self.directory.exists():
                raise UsageError(f"{flag} {self.directory}: not a directory")
            # Never made here: an unmounted stick's mount point would take the bundle.
            raise UsageError(
                f"{flag} {self.directory}: no such directory",
                hint="mount the media there, or create the directory first",
            )

    def describe(self) -> str:
        """The place as a ledger names it: the URL without secrets, or the absolute directory."""
        if self.server is not None:
            return with_login(FtpTarget.parse(self.server)).describe()
        return str((self.directory or Path()).resolve())

    def flags(self, *, pinned: bool = True) -> str:
        """The options that name this drop box again, as a hint to type them (``pinned``:
        with its certificate pin, unless that pin was just refused)."""
        pin = f" --tls-fingerprint {self.fingerprint}" if self.fingerprint and pinned else ""
        return f"--server {shlex.quote(self.server or '')}{pin}"

    def key(self) -> str:
        """A stable name for this place, for its spool folder."""
        where = self.server or str(self.directory)
        return hashlib.sha256(where.encode()).hexdigest()[:16]


def open_place(place: Place, flag: str, *, spool: Path | None = None) -> Transport:
    """The transport for ``place``; a drop box is spooled in ``spool`` (default: per place)."""
    place.check(flag)
    if place.directory is not None:
        return DirectoryTransport(place.directory)
    target = FtpTarget.parse(place.server or "")
    target, password = login_for(target, password_file=place.password_file)
    remote = FtpTransport(target, password, pin=place.fingerprint)
    folder = spool or cache_dir() / "fetch" / place.key()
    backoff = Backoff(attempts=_attempts(), notify=lambda news: say(f"airgap: {news}"))
    return SpooledTransport(remote, folder, backoff=backoff)


def _attempts() -> int:
    """AIRGAP_RETRIES: how many times a failed transfer is tried in all (default 6)."""
    text = os.environ.get("AIRGAP_RETRIES", "6")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 100:
        raise UsageError(f"AIRGAP_RETRIES={text!r} is not a number from 1 to 100")
    return int(text)


def send_spool(bundle_id: str) -> Path:
    return cache_dir() / "send" / bundle_id


#: A spool being deleted: no run takes such a folder for an unfinished send.
GONE_PREFIX = ".gone-"


def forget_spool(path: Path) -> None:
    """Drop a send's spool in one step, as the spool is what marks a send unfinished: it is
    renamed out of the way, then deleted. Deleted in place, a kill halfway left a spool
    without its payload (every rerun failed) or without its recipe (the rerun sent a new
    bundle, the old spool kept for good). What such a kill leaves now is a dotted folder,
    dropped by the next send."""
    try:
        path.rename(path.with_name(f"{GONE_PREFIX}{path.name}-{secrets.token_hex(4)}"))
    except FileNotFoundError:
        pass  # nothing to drop, but what earlier kills left
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
    drop_gone(path.parent)  # this spool, and what earlier kills left


def drop_gone(sends: Path) -> None:
    """What a kill left of a spool being deleted (see :func:`forget_spool`)."""
    with contextlib.suppress(OSError):
        for left in sends.glob(GONE_PREFIX + "*"):
            shutil.rmtree(left, ignore_errors=True)


def check_space(directory: Path, plaintext: int, *, held: int = 0) -> None:
    """Refuse before starting when ``directory`` cannot hold a payload of ``plaintext`` bytes
    (compression only shrinks it; age adds 16 bytes a 64 KiB chunk), of which it already
    ``held`` bytes (a continued send's spool: compared, not written again)."""
    needed = max(0, plaintext + plaintext // 1000 - held) + (1 << 20)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        raise StorageError(f"{directory}: {exc.strerror or exc}") from exc
    if free < needed:
        raise StorageError(
            f"not enough space in {directory}: up to {needed >> 20} MiB needed, "
            f"{free >> 20} MiB free",
            hint="free some space, or point XDG_CACHE_HOME (drop box) or --to at a larger disk; "
            "that is the uncompressed size: --skip-space-check starts anyway, and a disk that "
            "fills stops the send",
        )
