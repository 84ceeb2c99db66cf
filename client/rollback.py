"""Tags never move back: a bundle older than the one a ref was last imported from here would
move that ref to an older image, so a drop box or a stick that kept an old bundle could roll a
fix back. Such a bundle is refused; loaded only as the carrier of layers a newer thin bundle
needs, it leaves those refs where they were (``_Run`` in :mod:`airgap.client.fetch` puts them
back once the thin bundle has loaded).

Refs are compared as the tag they move (``docker.io/library/app`` and ``app:latest`` are one).
Bundle ids sort by time, and the ledger says which bundle each tag came from last.
"""

from __future__ import annotations

from collections.abc import Iterable

from airgap.shared.errors import ReplayError
from airgap.shared.manifest import Manifest
from airgap.shared.refs import tag_of


class Newest:
    """For each tag, the newest bundle id it was imported from here."""

    def __init__(self, by_ref: dict[str, str]) -> None:
        self._by_tag: dict[str, str] = {}
        for ref, bundle_id in by_ref.items():
            self._raise(tag_of(ref), bundle_id)

    def newer(self, manifest: Manifest) -> dict[str, str]:
        """Each ref of ``manifest`` last imported from a newer bundle, with that bundle's id."""
        refs = [ref for image in manifest.images for ref in image.refs]
        return {
            ref: self._by_tag[tag_of(ref)]
            for ref in refs
            if self._by_tag.get(tag_of(ref), "") > manifest.id
        }

    def imported(self, refs: Iterable[str], bundle_id: str) -> None:
        for ref in refs:
            self._raise(tag_of(ref), bundle_id)

    def _raise(self, tag: str, bundle_id: str) -> None:
        if bundle_id > self._by_tag.get(tag, ""):
            self._by_tag[tag] = bundle_id


def refusal(newer: dict[str, str]) -> ReplayError:
    ref, newest = next(iter(newer.items()))
    return ReplayError(
        f"older than bundle {newest}, from which {ref} was imported here: loading it would "
        f"move {ref} back to an older image",
        hint="a bundle superseded by a newer one stays refused (remove it from the source); "
        "to have that image here again, send it anew from the connected side",
    )
