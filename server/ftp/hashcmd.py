"""``HASH`` (draft-bryan-ftpext-hash): SHA-256 only, with the optional ``RANG``.

The digest is computed on a worker thread (and cached by :class:`~airgap.server.hashing.
HashCache`); the session runs no further commands until it answers, as for a login.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from airgap.server.ftp.session import Session
from airgap.server.policy import Op

FEATURES = ("HASH SHA-256*", "RANG STREAM")


class HashCommands(Session):
    _range: tuple[int, int] | None = None

    def ftp_FEAT(self, line: str) -> None:
        if FEATURES[0] not in self._extra_feats:
            self._extra_feats = [*self._extra_feats, *FEATURES]
        super().ftp_FEAT(line)

    def ftp_OPTS(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd.upper() != "HASH":
            super().ftp_OPTS(line)
        elif arg.strip().upper() in ("", "SHA-256"):
            self.respond("200 SHA-256")
        else:
            self.respond("504 Only SHA-256 is supported.")

    def ftp_RANG(self, line: str) -> None:
        try:
            start, end = (int(x) for x in line.split())
            if start < 0 or end < start:
                raise ValueError
        except ValueError:
            self.respond("501 Syntax: RANG <start> <end> (bytes, end included).")
            return
        self._range = (start, end)
        self.respond(f"350 Restarting at {start}. Ending byte range at {end}.")

    def ftp_HASH(self, path: str) -> None:
        byte_range, self._range = self._range, None
        if not self._allowed(Op.STAT, path):
            return
        if Path(path).is_symlink() or not Path(path).is_file():
            self.respond("550 Not a regular file.")
            return
        start, end = byte_range if byte_range else (0, None)
        stop = None if end is None else end + 1
        shown = self.fs.fs2ftp(path)
        hashes = self.services.hashes

        def answer(future: Future[tuple[str, int, int]]) -> None:
            if future.exception() is not None:
                self.respond("550 Cannot hash this file.")
            else:
                digest, first, last = future.result()
                self.respond(f"213 SHA-256 {first}-{max(last - 1, first)} {digest} {shown}")
            self._resume()

        self._check(lambda: hashes.digest(Path(path), start, stop), answer)
