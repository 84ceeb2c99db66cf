"""What the spools hold: unfinished sends and partial downloads, to list and to drop.

An interrupted ``airgap send`` to a drop box keeps its spool (``send/ID``: the record of the
send, the age file key, the payload so far) until the same command finishes it; a download
keeps what it got (``fetch/PLACE/ID.tar.zst.age``) until its bundle is imported. Neither
expires on its own: one given up for good stays until it is dropped here. Manifests and
signatures are no longer spooled, but one an earlier airgap left there is listed with its
bundle, so that it can be dropped. Nothing here talks to a server or an engine.
"""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from airgap.client.transport import MANIFEST_SUFFIX, SIGNATURE_SUFFIX
from airgap.client.unfinished import claim, in_use, recipe_of
from airgap.shared.errors import StorageError, UsageError
from airgap.shared.ids import ID_LENGTH, is_bundle_id, made_at
from airgap.shared.manifest import payload_name


@dataclass(frozen=True)
class Held:
    """One unfinished send (``kind`` "send") or partial download ("download") in the spool."""

    bundle_id: str
    kind: str
    path: Path
    size: int
    when: datetime  # a send: when it began (its id's time); a download: its last write
    destination: str = ""  # a send's drop box, as its record names it
    content: tuple[str, ...] = ()  # a send's images or files
    busy: bool = False  # an airgap is sending it right now


def held(cache: Path) -> list[Held]:
    """Everything the spools under ``cache`` hold, oldest first."""
    found = [*_sends(cache / "send"), *_downloads(cache / "fetch")]
    return sorted(found, key=lambda h: (h.bundle_id, h.kind))


def drop(cache: Path, bundle_id: str) -> list[Held]:
    """Remove what the spools hold of ``bundle_id``; refuses a send that is running."""
    if not is_bundle_id(bundle_id):
        raise UsageError(f"{bundle_id!r} is not a bundle id", hint="airgap spool show lists them")
    chosen = [h for h in held(cache) if h.bundle_id == bundle_id]
    if not chosen:
        raise UsageError(f"the spool holds nothing of bundle {bundle_id}")
    for item in chosen:  # first every claim, so that a refusal leaves all of it in place
        if item.kind == "send" and not claim(item.path):  # held until this process ends
            raise StorageError(
                f"bundle {bundle_id} is being sent right now; not dropping its spool",
                hint="stop that airgap send first",
            )
    for item in chosen:
        if item.kind == "send":
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
    return chosen


def _sends(root: Path) -> list[Held]:
    found = []
    for folder in _entries(root):
        if not folder.is_dir() or not is_bundle_id(folder.name):
            continue
        try:
            recipe = recipe_of(folder)
        except StorageError:
            recipe = None  # unreadable: still listed, so that it can be dropped
        content = (*recipe.images, *recipe.files) if recipe else ()
        destination = recipe.destination if recipe else "?"
        began = datetime.fromtimestamp(made_at(folder.name), UTC)
        found.append(
            Held(
                folder.name,
                "send",
                folder,
                _size(folder),
                began,
                destination,
                content,
                in_use(folder),
            )
        )
    return found


def _downloads(root: Path) -> list[Held]:
    found = []
    for place in _entries(root):
        for path in _entries(place):
            bundle_id = _download_id(path.name)
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # imported and dropped just now
            if bundle_id and stat.S_ISREG(info.st_mode):
                written = datetime.fromtimestamp(info.st_mtime, UTC)
                found.append(Held(bundle_id, "download", path, info.st_size, written))
    return found


def _download_id(name: str) -> str | None:
    """The bundle of a spooled payload, or of a manifest or signature an earlier airgap
    spooled (one over 1 MiB, unverified: it must not stay hidden)."""
    bundle_id = name[:ID_LENGTH]
    if not is_bundle_id(bundle_id):
        return None
    names = (
        payload_name(bundle_id, encrypted=True),
        payload_name(bundle_id, encrypted=False),
        bundle_id + MANIFEST_SUFFIX,
        bundle_id + SIGNATURE_SUFFIX,
    )
    return bundle_id if name in names else None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise StorageError(f"spool {folder}: {exc.strerror or exc}") from exc


def _size(path: Path) -> int:
    """Bytes under ``path``; a file that a finishing send or fetch removes meanwhile is 0."""
    total = 0
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        try:
            info = item.lstat()
        except FileNotFoundError:
            continue
        total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total
