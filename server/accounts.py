"""The accounts as this server last read them, read again only when ``users.json`` changed.

A logged-in session asks before each command whether its account is still the one it logged in
with, so that ``airgap user passwd`` and ``airgap user remove`` end its sessions. Until the
file changes, the answer costs one ``stat``; the file is read only after a change (each write
of it is a rename, so a new inode). Used on the IO loop alone. This module never sees a
password, only the stored hashes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from airgap.server.users import User, UserDB
from airgap.shared.errors import StorageError

logger = logging.getLogger("airgap.server")

Stamp = tuple[int, int, int, int, int] | None  # None: no file


def _stamp(path: Path) -> Stamp:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Accounts:
    def __init__(self, users: UserDB) -> None:
        self._users = users
        self._stamp: Stamp | bool = False  # False: never read
        self._known: dict[str, User] | None = None  # None: unreadable

    def change_of(self, account: User) -> str | None:
        """Why a session logged in as ``account`` may not go on; None if it may."""
        try:
            users = self._current()
        except OSError as exc:
            logger.error("users file %s: %s", self._users.path, exc.strerror or exc)
            return "the users file cannot be read"
        if users is None:
            return "the users file cannot be read"
        now = users.get(account.name)
        if now is None:
            return "account removed"
        if now.role is not account.role:
            return "role changed"
        if now.password != account.password:
            return "password changed"
        return None

    def _current(self) -> dict[str, User] | None:
        stamp = _stamp(self._users.path)  # before the read: a change meanwhile reads again
        if stamp != self._stamp:
            try:
                self._known = self._users.load()
            except StorageError as exc:
                logger.error("%s", exc)
                self._known = None
            self._stamp = stamp
        return self._known
