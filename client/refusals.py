"""Bundles the drop box refused after they were sent.

The appliance checks each bundle once its signature arrives; one it refuses goes to its
quarantine, and the appliance leaves an empty ``ID.refused`` in the sender's area. The next
send to that drop box finds it in a listing: the bundle never reached the receivers, so the
layers it carried stop counting as delivered in the sender's ledgers (the next send carries
them again), the person is told, and the notice is deleted. The reason stays with the
appliance's operator. Other FTP servers never leave one: nothing changes there.

The first send to read a notice takes it up. Where machines share one sender account, that
may be another machine than the one that sent the bundle, whose ledgers alone hold it: the
person is then told that the bundle's layers may still count as delivered there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from airgap.client.ftp import UnknownHost, Unreachable, WrongPlace
from airgap.client.sendledger import drop_bundles
from airgap.client.transport import Transport
from airgap.shared.errors import CertificateMismatch, LoginError, TransferError
from airgap.shared.ids import is_bundle_id

REFUSED_SUFFIX = ".refused"
#: The most notices one send takes up (the appliance keeps at most 100 refused bundles of an
#: area; a hostile listing could name hundreds of thousands).
MAX_NOTICES = 100


@dataclass(frozen=True)
class Notice:
    bundle_id: str
    ours: bool  # this machine's ledgers held the bundle (an image bundle sent from here)


def take_refusals(transport: Transport, ledgers: Path, destination: str) -> list[Notice]:
    """The refused bundles noticed, dropped from the ledgers of ``destination``.
    ``transport`` is asked once, without retries: a server that will not list (some answer
    450 for an empty folder, or 502 for no NLST at all) has left no notice, and the send goes
    on. A refusal of the login, the server or the URL (a wrong password, a ban, another
    certificate than the pinned one, a path the account may not enter) ends the send here,
    before anything is encoded: the upload would only log in and be refused again. So does a
    server that does not answer at all."""
    try:
        names = transport.list()
    except (LoginError, CertificateMismatch, UnknownHost, Unreachable, WrongPlace):
        raise  # refused, or nothing answers: so would the upload
    except TransferError:
        return []  # the listing alone refused, or cut: no notice, and the send goes on
    refused = sorted(
        {
            name.removesuffix(REFUSED_SUFFIX)
            for name in names
            if name.endswith(REFUSED_SUFFIX) and is_bundle_id(name.removesuffix(REFUSED_SUFFIX))
        }
    )[:MAX_NOTICES]
    held = drop_bundles(ledgers, destination, refused) if refused else set()
    for bundle_id in refused:  # after the ledgers: a notice left there is read again next time
        with contextlib.suppress(TransferError):
            transport.delete(bundle_id + REFUSED_SUFFIX)
    return [Notice(bundle_id, bundle_id in held) for bundle_id in refused]
