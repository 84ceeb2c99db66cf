"""Unfinished sends: what an ``airgap send`` to a drop box keeps in its spool so that, after
any interruption, the same command (or ``airgap send --resume ID``) continues it.

Before encoding starts, the spool (``$XDG_CACHE_HOME/airgap/send/ID``, 0700) gets the send's
:class:`Recipe` (what was sent where, and how) and its age :class:`~airgap.shared.age.PayloadKey`
(0600). Encoding the same plaintext again with that key gives the same payload bytes, so a send
killed while still encoding continues by encoding again, comparing the bytes the spool holds
and uploading only what the server lacks. The key is as secret as the plaintext; it leaves with
the spool when the send completes. Nothing here talks to a server or an engine.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airgap.client.pace import LEVELS
from airgap.client.private import private_dir
from airgap.shared import age
from airgap.shared.age_header import Stanza
from airgap.shared.errors import StorageError, UsageError
from airgap.shared.ids import is_bundle_id

RECIPE = "send.json"
KEY = "payload.key"
LOCK = "lock"
_claimed: list[int] = []  # lock files held until this process ends (a kill releases them too)


@dataclass(frozen=True)
class Recipe:
    """A send, as the command line asked for it (paths absolute, names as typed)."""

    destination: str
    audience: tuple[str, ...]
    level: int | None  # None: the pace chooses (client/pace.py)
    images: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    full: bool = False
    bases: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        obj: dict[str, Any] = json.loads(text)
        return cls(
            destination=str(obj["destination"]),
            audience=tuple(obj["audience"]),
            level=None if obj["level"] is None else int(obj["level"]),
            images=tuple(obj["images"]),
            files=tuple(obj["files"]),
            full=bool(obj["full"]),
            bases=tuple(obj["bases"]),
        )


class _StoredPassphrase(age.ScryptRecipient):
    """The passphrase of an interrupted send, as its manifest names it: the stored key's header
    already wraps the file key with it. It cannot wrap a new one (there is no passphrase here),
    so it can never encrypt a new bundle to a passphrase nobody chose."""

    def __init__(self) -> None:
        super().__init__(b"unused")

    def wrap(self, file_key: bytes) -> Stanza:
        raise UsageError(
            "the interrupted send cannot be continued, and its passphrase is not known here",
            hint="send again with --passphrase (AIRGAP_PASSPHRASE)",
        )


def is_stand_in(recipient: age.Recipient) -> bool:
    return isinstance(recipient, _StoredPassphrase)


def stand_ins(audience: tuple[str, ...]) -> list[age.Recipient]:
    """Recipients for continuing a send to ``audience`` with its stored PayloadKey: they name
    the encryption in the manifest, since the key's header already holds their stanzas (so a
    passphrase is not asked for again)."""
    found: list[age.Recipient] = [
        age.X25519Recipient.parse(a) for a in audience if a not in ("none", "passphrase")
    ]
    if "passphrase" in audience:
        found.append(_StoredPassphrase())
    return found


def claim(spool: Path) -> bool:
    """Hold ``spool`` for this process; False when another airgap is sending from it."""
    try:
        fd = os.open(spool / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"spool {spool}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _claimed.append(fd)
    return True


def in_use(folder: Path) -> bool:
    """True when another airgap holds the send's lock (this one takes and gives it back)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock, if it was taken
    return False


def begin(spool: Path, recipe: Recipe, key: age.PayloadKey | None) -> None:
    """Record a send before its first byte is encoded (and hold its spool)."""
    private_dir(spool)
    held = claim(spool)
    try:
        _write(spool / RECIPE, recipe.to_json().encode())
        if key is not None:
            text = f"{_b64(key.file_key)}\n{_b64(key.preamble)}\n"
            _write(spool / KEY, text.encode())
    except BaseException as exc:
        # Not recorded, so nothing to continue: a record cut short (a full disk, a Ctrl-C)
        # would stay listed as "? to ?" until dropped by hand.
        shutil.rmtree(spool, ignore_errors=True)
        if held:
            os.close(_claimed.pop())  # its lock, taken just above
        cause = exc.__cause__
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        if isinstance(exc, StorageError) and full and not exc.hint:
            exc.hint = "free some space there, then run the same command again"
        raise


def began_encoding(spool: Path) -> bool:
    """Whether the send in ``spool`` wrote a byte past its record: one that failed before (no
    password, an unknown image, a save the engine refused) has nothing to continue."""
    return encoded_bytes(spool) > 0


def encoded_bytes(spool: Path) -> int:
    """The bytes the send in ``spool`` has encoded so far (its payload, and once done its
    manifest and signature): a continued send compares them, it does not write them again."""
    try:
        kept = (RECIPE, KEY, LOCK, LEVELS)  # what a send keeps before its first encoded byte
        return sum(p.stat().st_size for p in spool.iterdir() if p.name not in kept)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StorageError(f"spool {spool}: {exc.strerror or exc}") from exc


def recipe_of(spool: Path) -> Recipe | None:
    try:
        return Recipe.from_json((spool / RECIPE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"spool {spool}: the record of the send is unreadable") from exc


def key_of(spool: Path) -> age.PayloadKey | None:
    try:
        file_key, preamble = (spool / KEY).read_text(encoding="ascii").split()
        return age.PayloadKey(base64.b64decode(file_key), base64.b64decode(preamble))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"spool {spool}: the payload key is unreadable") from exc


def find(sends: Path, recipe: Recipe) -> str | None:
    """The newest unfinished send of exactly ``recipe`` under ``sends`` that no other airgap
    is sending, by bundle id; it is held for this process from then on."""
    try:
        folders = sorted((p for p in sends.iterdir() if is_bundle_id(p.name)), reverse=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"spool {sends}: {exc.strerror or exc}") from exc
    for folder in folders:
        try:
            if recipe_of(folder) == recipe and claim(folder):  # not one sending right now
                return folder.name
        except StorageError:
            continue  # an unreadable record is not this send
    return None


def alike(sends: Path, recipe: Recipe, *, besides: str) -> list[str]:
    """The unfinished sends under ``sends``, ``besides`` aside, of the same images or files to
    the same destination as ``recipe``: other options (recipients, --full, --base, --level), or
    held by another airgap (not asked: taking its lock even for a moment could make that airgap
    believe another holds it)."""
    try:
        folders = sorted(p for p in sends.iterdir() if is_bundle_id(p.name) and p.name != besides)
    except OSError:
        return []
    found = []
    for folder in folders:
        try:
            other = recipe_of(folder)
        except StorageError:
            continue
        what = (recipe.destination, recipe.images, recipe.files)
        if other is not None and (other.destination, other.images, other.files) == what:
            found.append(folder.name)
    return found


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"spool {path.parent}: {exc.strerror or exc}") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
