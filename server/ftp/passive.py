"""Passive data ports: only those of the configured range, the ones a firewall or a container
lets through.

Once every port of the range is in use, pyftpdlib listens on one the kernel picks and logs a
warning: the client is told a port nothing forwards, and its transfer fails on a timeout. Here
PASV and EPSV are refused with ``425`` instead, which a client can act on.

A connection to a passive port from an address other than the client's is closed unanswered,
and the port goes on waiting for the client's own. pyftpdlib also told the client ``425
Rejected data connection from foreign address`` on its control connection, unasked, which the
client took for the answer to its STOR, RETR or listing: anyone who could reach the passive
ports, without an account, could fail every transfer by connecting to them in a loop.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pyftpdlib.handlers import FTPHandler

from airgap.server.ftp.base import SessionAPI

logger = logging.getLogger("airgap.server")


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

    _foreign_seen = False

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        control = self.cmd_channel
        if control.connected and addr[0] != control.remote_ip:
            sock.close()
            if not self._foreign_seen:  # once a port: a loop of them must not flood the log
                self._foreign_seen = True
                logger.warning(
                    "%s: a data connection from %s to its passive port closed unanswered",
                    control.remote_ip,
                    addr[0],
                )
            return
        super().handle_accepted(sock, addr)


class PassiveCommands(SessionAPI):
    def _make_epasv(self, extmode: bool = False) -> None:
        try:
            super()._make_epasv(extmode)
        except NoFreePort:
            self._dtp_acceptor = None
            self.respond("425 No free passive port; try again shortly.")
