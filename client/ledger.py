"""The receiver's ledger: which bundles were imported here, so re-runs skip them and an old
bundle shown again is never imported twice; and which bundle each image ref came from last, so
an older bundle never moves a ref back (:meth:`Ledger.read`).

One JSON object a line, appended and fsynced after each import; a torn last line (a crash while
writing it) is ignored, so the worst case is one bundle offered again, never a lost record.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from airgap.shared.errors import StorageError


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger for one run: two fetches at once would import a bundle twice."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as exc:
            raise StorageError(f"ledger {self.path}: {exc.strerror or exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StorageError(
                    f"another airgap fetch is using {self.path}", hint="wait for it to finish"
                ) from exc
            yield
        finally:
            os.close(fd)

    def read(self) -> tuple[set[str], dict[str, str]]:
        """In one read: the bundle ids imported here, and for each image ref the newest of
        them that tagged it (ids sort by time; records written before refs were recorded name
        none)."""
        ids: set[str] = set()
        newest: dict[str, str] = {}
        for bundle_id, record in self._records():
            ids.add(bundle_id)
            refs = record.get("refs")
            for ref in refs if isinstance(refs, list) else ():
                if isinstance(ref, str) and bundle_id > newest.get(ref, ""):
                    newest[ref] = bundle_id
        return ids, newest

    def ids(self) -> set[str]:
        return self.read()[0]

    def _records(self) -> Iterator[tuple[str, dict[str, object]]]:
        """Each readable record with its bundle id; a torn or foreign line is skipped (a write
        cut short is followed by a fresh line, so one may be anywhere)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"ledger {self.path}: {exc.strerror or exc}") from exc
        for line in lines:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and isinstance(bundle_id := record.get("id"), str):
                yield bundle_id, record

    def record(
        self,
        bundle_id: str,
        *,
        manifest_sha256: str,
        where: str,
        refs: Sequence[str] = (),
    ) -> None:
        line = json.dumps(
            {
                "id": bundle_id,
                "manifest_sha256": manifest_sha256,
                "where": where,
                "refs": list(refs),
                "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            sort_keys=True,
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self.path, flags, 0o600)
            try:
                # After a torn write, start on a fresh line so this record stays readable.
                end = os.lseek(fd, 0, os.SEEK_END)
                torn = end > 0 and os.pread(fd, 1, end - 1) != b"\n"
                os.write(fd, (("\n" if torn else "") + line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"ledger {self.path}: {exc.strerror or exc}") from exc
