"""The sender's ledger: which layers each destination already received, so the next send of an
image can leave them out.

One JSON file per destination (a drop box or a directory) and audience (the recipients a bundle
is encrypted to, since another audience may be another receiver). It maps the chain id of every
layer of every completely uploaded bundle to the bundle that carried it, and keeps hints about
how each layer's file looked in a save (its size, its blob digest), so a thin archive can be cut
without hashing every file. Hints never decide anything alone: see :mod:`airgap.client.thin`.

A missing ledger means "the far side has nothing": the send is full. An unreadable one is an
error with a hint, never silently a different plan. Writes are atomic and locked.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airgap.client.private import private_dir, write_whole
from airgap.client.saved import LayerFile
from airgap.shared import age, locks
from airgap.shared.errors import StorageError
from airgap.shared.layers import chain_ids
from airgap.shared.manifest import Encryption, ImageEntry, Manifest


def audience(recipients: Sequence[age.Recipient]) -> tuple[str, ...]:
    """Who can open the bundles sent with ``recipients``, as the ledger names them."""
    names = sorted(r.encode() for r in recipients if isinstance(r, age.X25519Recipient))
    if any(isinstance(r, age.ScryptRecipient) for r in recipients):
        names.append("passphrase")
    return tuple(names) or ("none",)


def audience_of(encryption: Encryption) -> tuple[str, ...]:
    """:func:`audience` as a manifest records it."""
    names = sorted(encryption.recipients) + (["passphrase"] if encryption.passphrase else [])
    return tuple(names) or ("none",)


@dataclass(frozen=True)
class FarSide:
    """What the sender believes the receiving engine holds."""

    layers: Mapping[str, str | None] = field(default_factory=dict)  # chain id -> its bundle
    files: Mapping[str, LayerFile] = field(default_factory=dict)  # diff id -> hints

    def knowing(self, images: Iterable[ImageEntry]) -> FarSide:
        """This far side, plus the layers of ``images`` (which it is said to hold)."""
        layers = dict(self.layers)
        for image in images:
            for chain in chain_ids(image.layers):
                layers.setdefault(chain, None)
        return FarSide(layers, self.files)


@dataclass(frozen=True)
class Summary:
    destination: str
    audience: tuple[str, ...]
    path: Path
    bundles: tuple[str, ...]
    layers: Mapping[str, str | None]
    updated: str


class SendLedger:
    """What the bundles sent to one place for one audience took there.

    An audience with a passphrase keeps no ledger: all passphrase sends would share it (the
    passphrase itself is not kept, not even as a hash one could guess against), and a thin
    bundle could then lean on one that only another passphrase opens. Such sends go whole.
    """

    def __init__(self, directory: Path, destination: str, who: Sequence[str]) -> None:
        self.destination, self.audience = destination, tuple(who)
        key = hashlib.sha256(f"{destination}\n{','.join(who)}".encode()).hexdigest()[:16]
        self.path = directory / f"{key}.json"
        self.kept = "passphrase" not in self.audience

    def far_side(self) -> FarSide:
        if not self.kept:
            return FarSide()
        data = _read(self.path)
        if data is None:
            return FarSide()
        files = {d: LayerFile(int(f["size"]), f.get("blob")) for d, f in data["files"].items()}
        return FarSide(dict(data["layers"]), files)

    def record(self, manifest: Manifest, files: Mapping[str, LayerFile]) -> None:
        """Add a bundle that was completely uploaded: each of its layers is now on the far
        side, carried by this bundle unless the manifest says an earlier one carried it."""
        if not self.kept:
            return
        omitted = {o.chain_id: o.bundle for o in manifest.omitted}
        with self._locked():
            data = _read(self.path) or {"layers": {}, "files": {}, "bundles": []}
            refused = set(data.get("refused", ()))
            for image in manifest.images:
                for chain in chain_ids(image.layers):
                    carrier = omitted.get(chain, manifest.id)
                    if carrier not in refused:  # a bundle planned before its carrier's refusal
                        data["layers"][chain] = carrier
            for diff_id, hint in files.items():
                data["files"][diff_id] = {"size": hint.size, "blob": hint.blob}
            if manifest.id not in data["bundles"]:
                data["bundles"].append(manifest.id)
            data.update(
                destination=self.destination,
                audience=list(self.audience),
                updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            _write(self.path, data)

    def drop(self, bundle_ids: Collection[str]) -> set[str]:
        """Those bundles never reached the far side (the drop box refused them): the layers
        they carried, as the ledger has it, are no longer counted as there. Returns those of
        them the ledger held."""
        with self._locked():
            data = _read(self.path)
            if data is None:
                return set()
            held = set(data["bundles"]) & set(bundle_ids)
            data["layers"] = {c: b for c, b in data["layers"].items() if b not in bundle_ids}
            data["bundles"] = [b for b in data["bundles"] if b not in bundle_ids]
            # Kept: a thin bundle planned on one of them before, and recorded after, would
            # bring its layers back.
            data["refused"] = sorted(set(data.get("refused", ())) | held)
            _write(self.path, data)
            return held

    def forget(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"ledger {self.path}: {exc.strerror or exc}") from exc
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            private_dir(self.path.parent)
        except OSError as exc:
            raise StorageError(f"ledger {self.path}: {exc.strerror or exc}") from exc
        with locks.held(self.path.with_suffix(".lock"), f"ledger {self.path}"):
            yield


def drop_bundles(directory: Path, destination: str, bundle_ids: Collection[str]) -> set[str]:
    """:meth:`SendLedger.drop` in the ledger of every audience of ``destination`` (one of
    another destination that cannot be read is not this send's business); returns the
    bundles some ledger held."""
    held: set[str] = set()
    for path in sorted(directory.glob("*.json")):
        try:
            data = _read(path)
        except StorageError:
            continue
        if data is not None and data.get("destination") == destination:
            audience = tuple(data.get("audience", ()))
            held |= SendLedger(directory, destination, audience).drop(frozenset(bundle_ids))
    return held


def summaries(directory: Path, skipped: list[StorageError] | None = None) -> list[Summary]:
    """Every ledger in ``directory``; one that cannot be read is left out, its error added to
    ``skipped`` (it holds one destination's layers, and need not hide the others')."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = _read(path)
        except StorageError as exc:
            if skipped is None:
                raise
            skipped.append(exc)
            continue
        if data is not None:
            found.append(
                Summary(
                    str(data.get("destination", "?")),
                    tuple(data.get("audience", ())),
                    path,
                    tuple(data["bundles"]),
                    dict(data["layers"]),
                    str(data.get("updated", "")),
                )
            )
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("layers"), dict)
        and all(isinstance(b, str | None) for b in data["layers"].values())  # None: --base
        and isinstance(data.get("files"), dict)
        and all(
            isinstance(f, dict) and isinstance(f.get("size"), int) for f in data["files"].values()
        )
        and _strings(data.get("bundles"))
        and _strings(data.get("refused", []))
        and _strings(data.get("audience", []))
        and isinstance(data.get("destination", ""), str)
        and isinstance(data.get("updated", ""), str)
    )
    if not ok:
        raise _unreadable(path, ValueError("not a ledger airgap wrote"))
    return dict(data)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _unreadable(path: Path, exc: Exception) -> StorageError:
    return StorageError(
        f"ledger {path} is unreadable: {getattr(exc, 'strerror', None) or exc}",
        hint=f"remove {path} to reset it alone (the next send to its destination is then "
        "full), or airgap ledger forget --all to reset every ledger",
    )


def _write(path: Path, data: dict[str, Any]) -> None:
    try:
        write_whole(path, json.dumps(data, sort_keys=True, indent=1).encode())
    except OSError as exc:
        raise StorageError(f"ledger {path}: {exc.strerror or exc}") from exc
