"""Layer chain ids: how a Docker engine names a layer together with everything beneath it.

A diff id is the digest of one layer's uncompressed tar; the same diff id on top of different
layers is a different layer on disk. Engines therefore look layers up by *chain id*: the first
layer's chain id is its diff id, every further one is ``sha256(parent_chain_id + " " + diff_id)``
(the OCI image spec's ChainID). An incremental bundle omits layers by chain id, never by diff id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """The chain id of each prefix of ``diff_ids`` (bottom layer first)."""
    found: list[str] = []
    for diff_id in diff_ids:
        if not found:
            found.append(diff_id)
        else:
            joined = f"{found[-1]} {diff_id}".encode()
            found.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return tuple(found)


def all_chain_ids(images: Iterable[Sequence[str]]) -> set[str]:
    """Every chain id an engine holding images with these diff id lists must have."""
    return {chain for layers in images for chain in chain_ids(layers)}
