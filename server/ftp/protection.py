"""PROT under ``--tls required``: data goes over TLS, or not at all.

pyftpdlib checks the protection level only at PASV, EPSV, PORT and EPRT, and a data connection
goes encrypted only if ``PROT P`` still holds when it connects: a ``PROT C`` sent in between
made the next upload, download or listing cross in clear. Here ``PROT C`` is refused while
TLS is required, and a data connection that arrives without TLS all the same (whatever led to
it) is closed unused, with the session: it never carries a byte.

With ``--tls-reuse required`` (the default) each control connection gets a TLS context of its
own, so that its data connections can resume its session and no other (:mod:`.reuse`).
Commands sent in clear behind ``AUTH TLS`` are dropped, not run once TLS is up.
"""

from __future__ import annotations

import logging
from typing import Any

from pyftpdlib.utils import is_ssl_sock

from airgap.server.ftp.session import Session

logger = logging.getLogger("airgap.server")


class DataProtection(Session):
    """Mixed in before pyftpdlib's TLS_FTPHandler only (it has PROT and ``tls_data_required``)."""

    tls_reuse_required = False
    tls_context_factory: Any = None

    def ftp_AUTH(self, line: str) -> None:
        # A context of this connection's own, made as it asks for TLS (not for every connection
        # accepted, before the limits and bans have had their say).
        if self.tls_reuse_required and self.ssl_context is type(self).ssl_context:
            self.ssl_context = self.tls_context_factory()
        clear = not is_ssl_sock(self.socket)
        super().ftp_AUTH(line)
        if clear and is_ssl_sock(self.socket):
            # What came in clear behind AUTH, in the same packets, is dropped unread: it would
            # run as if sent over TLS, and a man in the middle could have put it there.
            self.ac_in_buffer = b""
            self._in_buffer, self._in_buffer_len = [], 0
            self._secured = object()  # and lines held behind a check go too (Session._resume)

    def ftp_PROT(self, line: str) -> None:
        if self.tls_data_required and line.strip().upper() == "C":
            self.respond("534 Data in clear is refused here: TLS is required; use PROT P.")
            return
        super().ftp_PROT(line)

    def _on_dtp_connection(self) -> None:
        channel = self.data_channel
        if self.tls_data_required and channel is not None and not is_ssl_sock(channel.socket):
            logger.warning("%s: data connection in clear refused", self.remote_ip)
            self.data_channel = None
            channel.close()
            self.respond("522 Data connection in clear refused: TLS is required; use PROT P.")
            self.close_when_done()  # drops whatever transfer was waiting for it
            return
        super()._on_dtp_connection()
