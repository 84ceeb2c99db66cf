"""Incremental image bundles: which layers to leave out, and what a thin bundle needs.

The sender leaves out a layer file only when every use of it in the archive (each image, each
position, so each chain id) is a layer the far side holds (:class:`FarSide`), and records in the
manifest each chain id it left out with the bundle that carried it. The receiver checks, before
anything is loaded, that its engine holds every one of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from airgap.client.sendledger import FarSide
from airgap.client.thin import ThinPlan
from airgap.shared.layers import chain_ids
from airgap.shared.manifest import ImageEntry, Manifest, OmittedLayer


def thin_plan(images: Iterable[ImageEntry], far: FarSide) -> ThinPlan:
    uses: dict[str, set[str]] = defaultdict(set)
    for image in images:
        for diff_id, chain in zip(image.layers, chain_ids(image.layers), strict=True):
            uses[diff_id].add(chain)
    omit = frozenset(d for d, chains in uses.items() if chains <= far.layers.keys())
    hints = [far.files.get(d) for d in omit]
    blobs = omit | {h.blob for h in hints if h is not None and h.blob}
    sizes = None if None in hints else frozenset(h.size for h in hints if h is not None)
    return ThinPlan(omit, frozenset(blobs), sizes)


def omitted_layers(
    images: Iterable[ImageEntry], dropped: Collection[str], far: FarSide
) -> tuple[OmittedLayer, ...]:
    """The manifest's record of what was left out: ``dropped`` holds the digests that showed
    each dropped file was an omitted layer (diff ids, or blob digests the hints name)."""
    by_blob = {h.blob: d for d, h in far.files.items() if h.blob}
    gone = {by_blob.get(digest, digest) for digest in dropped}
    found: dict[str, OmittedLayer] = {}
    for image in images:
        for diff_id, chain in zip(image.layers, chain_ids(image.layers), strict=True):
            if diff_id in gone and chain not in found:
                found[chain] = OmittedLayer(chain, far.layers.get(chain))
    return tuple(found.values())


def missing_layers(manifest: Manifest, have: Collection[str]) -> list[OmittedLayer]:
    """The layers a thin bundle leaves out that an engine holding chain ids ``have`` lacks."""
    return [o for o in manifest.omitted if o.chain_id not in have]
