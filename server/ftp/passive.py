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
    def listen(self, backlog: Any) -> None:
        """Only on a port of the range: not on the kernel's pick once every one is in use,
        nor on no port at all (a bind refused for the last of them, EPERM, leaves the socket
        unbound, and listen(2) picks one)."""
        ports = self.cmd_channel.passive_ports
        if ports is not None and self.socket.getsockname()[1] not in ports:
            self.close()
            raise NoFreePort
        super().listen(backlog)


class PassiveCommands(SessionAPI):
    def _make_epasv(self, extmode: bool = False) -> None:
        try:
            super()._make_epasv(extmode)
        except NoFreePort:
            self._dtp_acceptor = None
            self.respond("425 No free passive port; try again shortly.")
