"""The receiver's ledger: which bundles were imported here, so re-runs skip them and an old
bundle shown again is never imported twice; and which bundle each image ref came from last, so
an older bundle never moves a ref back (:meth:`Ledger.read`).

One JSON object a line, appended and fsynced after each import; a torn last line (a crash while
writing it) is ignored, so the worst case is one bundle offered again, never a lost record.
A record notes a ``--consume`` asked for, so a run cut off before its deletes is finished by
the next (:meth:`Ledger.unconsumed`).

Beside it, ``imported.jsonl.held`` lasts while a run loads an older bundle as the carrier of a
thin one's layers: the tags that load moves, and where they go back (:class:`Held`). A run
killed meanwhile leaves it, and the next run puts those tags back first.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from airgap.client.private import private_dir, sync_dir, write_whole
from airgap.shared.errors import StorageError
from airgap.shared.owners import written_by_others
from airgap.shared.refs import is_reference


@dataclass(frozen=True)
class Held:
    """Tags a carrier's load moves, each with the image it goes back to (None: untagged), the
    run's outermost bundle, and the carriers loaded for it."""

    bundle: str
    tags: dict[str, str | None]
    carriers: tuple[str, ...]
    #: Where a carrier's load put each tag: it goes back only from there (one moved since,
    #: by its user, stays where they put it).
    moved: dict[str, str | None] = field(default_factory=dict)


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = path.with_name(path.name + ".held")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger for one run: two fetches at once would import a bundle twice.
        A ledger someone else could have written is refused (:meth:`_vouch`)."""
        try:
            private_dir(self.path.parent)
            self._vouch()
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

    def _vouch(self) -> None:
        """Refuse a ledger someone else could have written: its held file moves tags, and its
        records decide what is skipped, what is a rollback, and what ``airgap ls`` calls
        imported."""
        for path in (self.path.parent / ".", self.path, self._held):
            if why := written_by_others(path):
                raise StorageError(
                    f"ledger {path}: {why}",
                    hint="keep the state folder (--state-dir) one only you may write to "
                    "(chmod go-w)",
                )

    def read(self) -> tuple[set[str], dict[str, str]]:
        """In one read: the bundle ids imported here, and for each image ref the newest of
        them that tagged it (ids sort by time; records written before refs were recorded name
        none)."""
        self._vouch()
        ids: set[str] = set()
        newest: dict[str, str] = {}
        for bundle_id, record in self._records():
            ids.add(bundle_id)
            refs = record.get("refs")
            for ref in refs if isinstance(refs, list) else ():
                if isinstance(ref, str) and is_reference(ref) and bundle_id > newest.get(ref, ""):
                    newest[ref] = bundle_id
        return ids, newest

    def ids(self) -> set[str]:
        return self.read()[0]

    def unconsumed(self, where: str) -> set[str]:
        """The bundles imported from ``where`` with ``--consume`` whose deletes were never
        said to be over (:meth:`consumed`): a run cut off before they ended. Only that source:
        a copy elsewhere (a --keep archive) is not the consumed one."""
        asked, over = set(), set()
        for bundle_id, record in self._records():
            if record.get("consume") is True and record.get("where") == where:
                asked.add(bundle_id)
            elif record.get("consumed") is True:
                over.add(bundle_id)
        return asked - over

    def consumed(self, bundle_id: str) -> None:
        """A ``--consume``'s deletes are over (done, or refused for good)."""
        self._append({"id": bundle_id, "consumed": True})

    def held(self) -> Held | None:
        """What a run cut off while loading a carrier left to put back, if anything; a file
        not as this code writes it is ignored (it is ours, 0600, in a folder only we may
        write to: :meth:`locked` checks)."""
        try:
            fd = os.open(self._held, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                record = json.loads(handle.read(1 << 20).decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # none there, or not ours
            return None
        if not isinstance(record, dict):
            return None
        bundle, tags, carriers = record.get("bundle"), record.get("tags"), record.get("carriers")
        moved = record.get("moved", {})
        if not isinstance(bundle, str) or not isinstance(tags, dict):
            return None
        if not isinstance(carriers, list) or not all(isinstance(c, str) for c in carriers):
            return None
        if not isinstance(moved, dict):
            return None
        ids = [v for v in [*tags.values(), *moved.values()] if v is not None]
        if not all(isinstance(v, str) and is_reference(v) for v in [*tags, *moved, *ids]):
            return None  # each goes to the engine's API, in a URL path
        return Held(bundle, tags, tuple(carriers), moved)

    def hold(self, held: Held) -> None:
        """Note ``held`` on disk, whole, before the load that moves its tags."""
        data = json.dumps(
            {
                "bundle": held.bundle,
                "tags": held.tags,
                "carriers": list(held.carriers),
                "moved": held.moved,
            },
            sort_keys=True,
        )
        try:
            private_dir(self.path.parent)
            write_whole(self._held, data.encode())
            sync_dir(self.path.parent)
        except OSError as exc:
            raise StorageError(f"ledger {self._held}: {exc.strerror or exc}") from exc

    def unhold(self) -> None:
        """The tags are back: nothing is left to put back."""
        try:
            self._held.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"ledger {self._held}: {exc.strerror or exc}") from exc

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
        consume: bool = False,
    ) -> None:
        record: dict[str, object] = {
            "id": bundle_id,
            "manifest_sha256": manifest_sha256,
            "where": where,
            "refs": list(refs),
            "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if consume:
            record["consume"] = True
        self._append(record)

    def _append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, sort_keys=True)
        try:
            private_dir(self.path.parent)
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
