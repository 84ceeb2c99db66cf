"""Bundles the drop box refused after they were sent.

The appliance checks each bundle once its signature arrives; one it refuses goes to its
quarantine, and the appliance leaves an empty ``ID.refused`` in the sender's area. The next
send to that drop box finds it in a listing: the bundle never reached the receivers, so the
layers it carried stop counting as delivered in the sender's ledgers (the next send carries
them again), the person is told, and the notice is deleted. The reason stays with the
appliance's operator. Other FTP servers never leave one: nothing changes there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from airgap.client.sendledger import drop_bundles
from airgap.client.transport import Transport
from airgap.shared.errors import TransferError
from airgap.shared.ids import is_bundle_id

REFUSED_SUFFIX = ".refused"


def take_refusals(transport: Transport, ledgers: Path, destination: str) -> list[str]:
    """The ids of the refused bundles noticed, dropped from the ledgers of ``destination``."""
    refused = sorted(
        name.removesuffix(REFUSED_SUFFIX)
        for name in transport.list()
        if name.endswith(REFUSED_SUFFIX) and is_bundle_id(name.removesuffix(REFUSED_SUFFIX))
    )
    if refused:
        drop_bundles(ledgers, destination, refused)
    for bundle_id in refused:  # after the ledgers: a notice left there is read again next time
        with contextlib.suppress(TransferError):
            transport.delete(bundle_id + REFUSED_SUFFIX)
    return refused
