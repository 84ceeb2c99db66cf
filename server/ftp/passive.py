"""Passive data ports: only those of the configured range, the ones a firewall or a container
lets through.

Once every port of the range is in use, pyftpdlib listens on one the kernel picks and logs a
warning: the client is told a port nothing forwards, and its transfer fails on a timeout. Here
PASV and EPSV are refused with ``425`` instead, which a client can act on.
"""

from __future__ import annotations

from typing import Any

from pyftpdlib.handlers import FTPHandler

from airgap.server.ftp.base import SessionAPI


class NoFreePort(Exception):
    """Every port of the passive range is in use."""


class RangedPassive(FTPHandler.passive_dtp):  # type: ignore[misc]  # pyftpdlib is untyped
    _ranged = False  # a port of the range was tried: a bind to port 0 is the kernel's pick

    def bind(self, address: Any) -> None:
        if address[1]:
            self._ranged = True
        elif self._ranged:  # not the probe of an IPv6 listener's family, which comes first
            self.close()
            raise NoFreePort
        super().bind(address)


class PassiveCommands(SessionAPI):
    def _make_epasv(self, extmode: bool = False) -> None:
        try:
            super()._make_epasv(extmode)
        except NoFreePort:
            self._dtp_acceptor = None
            self.respond("425 No free passive port; try again shortly.")
