"""The file system as a session sees it, and pyftpdlib's authorizer interface.

Every path a command names is made relative to the server root here (:meth:`AirgapFS.rel`)
before :mod:`airgap.server.policy` judges it. No symbolic link is followed or listed, no file
is opened for writing here (uploads go through :mod:`airgap.server.storage`), and no directory
is made or removed.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

from pyftpdlib.filesystems import AbstractedFS, FilesystemError

from airgap.server.policy import Parts, visible


class AirgapFS(AbstractedFS):  # type: ignore[misc]  # pyftpdlib is untyped
    """The file system view of one session: no links followed, listings filtered by policy."""

    def rel(self, path: str) -> Parts | None:
        """``path`` as parts below the root, or None when it leaves the root."""
        root = self.cmd_channel.services.layout.root
        relative = os.path.relpath(os.path.realpath(path), root)
        if relative == ".":
            return ()
        if relative.startswith(".."):
            return None
        return Path(relative).parts

    def validpath(self, path: str) -> bool:
        if any(c in path for c in "\0\r\n"):
            return False
        return bool(super().validpath(path))

    def open(self, filename: str, mode: str) -> Any:
        if mode != "rb":
            raise FilesystemError("not allowed")
        fd = os.open(filename, os.O_RDONLY | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FilesystemError("not a regular file")
        raw = io.FileIO(fd, "rb")
        raw.name = filename  # pyftpdlib reports a transfer by its file object's name
        return io.BufferedReader(raw)

    def listdir(self, path: str) -> list[str]:
        principal = self.cmd_channel.principal
        directory = self.rel(path)
        if directory is None:
            raise FilesystemError("outside the root")
        names = []
        for entry in os.scandir(path):
            if entry.is_symlink():
                continue
            if visible(principal, directory, entry.name, is_dir=entry.is_dir()):
                names.append(entry.name)
        return sorted(names)

    listdirinfo = listdir

    def mkstemp(self, *args: Any, **kwargs: Any) -> Any:
        raise FilesystemError("not allowed")

    def mkdir(self, path: str) -> None:
        raise FilesystemError("not allowed")

    def rmdir(self, path: str) -> None:
        raise FilesystemError("not allowed")

    def chmod(self, path: str, mode: int) -> None:
        raise FilesystemError("not allowed")

    def utime(self, path: str, timeval: float) -> None:
        raise FilesystemError("not allowed")


class Authorizer:
    """pyftpdlib's authorizer interface; logins are checked by the session off the IO loop and
    permissions by :mod:`airgap.server.policy` per command, so this only answers the rest."""

    def has_user(self, username: str) -> bool:
        return True

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return True  # each ftp_* override asks the policy, which knows the path's area

    def get_perms(self, username: str) -> str:
        return "elr"

    def get_msg_login(self, username: str) -> str:
        return "Logged in."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def impersonate_user(self, username: str, password: str) -> None:
        pass

    def terminate_impersonation(self, username: str) -> None:
        pass

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        raise AssertionError("logins go through the session's ftp_PASS")
