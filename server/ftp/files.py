"""The file commands (listing, reading, deleting, renaming), each asking the policy first.

A rename moves ``X.part`` to ``X`` only, never over an existing file, and never a file an
upload or the publisher holds; a finished name is handed to the bundle check.
"""

from __future__ import annotations

import os
from pathlib import Path

from airgap.server.ftp.session import Session
from airgap.server.policy import Op, Parts, rename_allowed


class FileCommands(Session):
    def ftp_CWD(self, path: str) -> None:
        if self._allowed(Op.CWD, path):
            super().ftp_CWD(path)

    def ftp_LIST(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_LIST(path)

    def ftp_NLST(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_NLST(path)

    def ftp_MLSD(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_MLSD(path)

    def ftp_MLST(self, path: str) -> None:
        # LIST allows what STAT does, and more: one rule whether the path is a file or not, so
        # a refusal does not say which (the policy still refuses a directory where a sender's
        # area may not be listed).
        if self._allowed(Op.LIST, path):
            super().ftp_MLST(path)

    def ftp_STAT(self, path: str) -> None:
        if not path or self._allowed(Op.LIST, path):
            super().ftp_STAT(path)

    def ftp_SIZE(self, path: str) -> None:
        if self._allowed(Op.STAT, path):
            super().ftp_SIZE(path)

    def ftp_MDTM(self, path: str) -> None:
        if self._allowed(Op.STAT, path):
            super().ftp_MDTM(path)

    def ftp_RETR(self, path: str) -> None:
        if self._allowed(Op.READ, path):
            super().ftp_RETR(path)

    def ftp_DELE(self, path: str) -> None:
        if not self._allowed(Op.DELETE, path):
            return
        if self.services.busy.is_busy(Path(path)):
            self.respond("450 File busy; try again later.")
            return
        if super().ftp_DELE(path):
            self._record("delete", path)

    def ftp_RNFR(self, path: str) -> None:
        if self._allowed(Op.RENAME_FROM, path):
            super().ftp_RNFR(path)

    def ftp_RNTO(self, path: str) -> None:
        source, self._rnfr = self._rnfr, None
        if source is None:
            self.respond("503 Bad sequence of commands: use RNFR first.")
            return
        if not self._allowed(Op.RENAME_TO, path):
            return
        if not self._renamable(self.fs.rel(source), self.fs.rel(path)):
            self.respond("550 Not allowed: only X.part may be renamed, to X.")
            return
        busy, claimed = self.services.busy, [Path(source), Path(path)]
        if not busy.claim(claimed):
            self.respond("450 File busy; try again later.")
            return
        try:
            if os.path.lexists(path):
                self.respond("550 Not allowed: the target exists and is never replaced.")
                return
            Path(source).rename(path)
        except OSError as exc:
            self.respond(f"550 {exc.strerror}.")
            return
        finally:
            busy.release(claimed)
        self.respond("250 Renaming ok.")
        self._record("rename", path, source=Path(source).name)
        self._check_bundle_of(path)

    @staticmethod
    def _renamable(src: Parts | None, dst: Parts | None) -> bool:
        return src is not None and dst is not None and rename_allowed(src, dst)
