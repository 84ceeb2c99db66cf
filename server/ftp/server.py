"""The handler class and the listening server, assembled from the mixins for one configuration.

pyftpdlib's own extension points do the work: ``proto_cmds`` (HASH and RANG added, directory
and SITE commands removed), ``abstracted_fs``, ``dtp_handler``, ``authorizer`` and the class
attributes for TLS, timeouts, passive ports and PORT hardening.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any, Protocol

from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from airgap.server.config import TlsMode, TlsReuse
from airgap.server.ftp.data import PlainData, throttled, tls_data_class
from airgap.server.ftp.files import FileCommands
from airgap.server.ftp.fs import AirgapFS, Authorizer
from airgap.server.ftp.hashcmd import HashCommands
from airgap.server.ftp.loop import Services
from airgap.server.ftp.passive import PassiveCommands, RangedPassive
from airgap.server.ftp.protection import DataProtection
from airgap.server.ftp.reuse import checkable as reuse_checkable
from airgap.server.ftp.session import REFUSED_COMMANDS
from airgap.server.ftp.uploads import UploadCommands
from airgap.server.layout import Layout

_NEW_COMMANDS = {
    # HASH carries a permission letter so that pyftpdlib maps its path through ftp2fs/validpath;
    # RANG takes numbers the handler parses itself.
    "HASH": {"perm": "l", "auth": True, "arg": True, "help": "Syntax: HASH <SP> file-name"},
    "RANG": {"perm": None, "auth": True, "arg": True, "help": "Syntax: RANG <SP> start end"},
}

logger = logging.getLogger("airgap.server")

DATA_IN_BUFFER = 1024 * 1024  # per read of a plain upload (TLS: see data.TLS_DRAIN)
DATA_OUT_BUFFER = 256 * 1024


def _commands(base: dict[str, Any]) -> dict[str, Any]:
    table = {k: v for k, v in base.items() if k not in REFUSED_COMMANDS}
    table.update(_NEW_COMMANDS)
    return table


#: How long a TLS session may be resumed: as long as a control connection may last (a slow
#: transfer of many GB), where OpenSSL's default (two hours) would refuse its next data
#: connection when TLS resumption is required.
SESSION_SECONDS = 7 * 24 * 3600


def _tls_context(layout: Layout) -> Any:
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.set_timeout(SESSION_SECONDS)
    context.use_certificate_chain_file(str(layout.tls_cert))
    context.use_privatekey_file(str(layout.tls_key))
    return context


class Listener(Protocol):
    """What ``airgap serve`` needs of the listening server."""

    socket: socket.socket

    def serve_forever(
        self, *, timeout: float | None, blocking: bool, handle_exit: bool
    ) -> None: ...

    def close_all(self) -> None: ...


def handler_class(services: Services) -> type:
    config = services.config
    base: Any = FTPHandler  # or TLS_FTPHandler; untyped either way
    data: type = PlainData
    mixins: tuple[type, ...] = (HashCommands, UploadCommands, FileCommands, PassiveCommands)
    attributes: dict[str, Any] = {}
    if config.tls is not TlsMode.OFF:
        from pyftpdlib.handlers import TLS_FTPHandler

        base, data = TLS_FTPHandler, tls_data_class()
        mixins = (DataProtection, *mixins)
        required = config.tls is TlsMode.REQUIRED
        reuse = config.tls_reuse is TlsReuse.REQUIRED and reuse_checkable()
        layout = services.layout
        attributes |= {
            "ssl_context": _tls_context(layout),
            "tls_control_required": required,
            "tls_data_required": required,
            "tls_reuse_required": reuse,
            # One context per control connection when reuse is required (see ftp.reuse).
            "tls_context_factory": staticmethod(lambda: _tls_context(layout)),
        }
    if config.max_rate:
        data = throttled(data, config.max_rate)
    attributes |= {
        "services": services,
        "authorizer": Authorizer(),
        "abstracted_fs": AirgapFS,
        # Larger data buffers: fewer loop turns per GiB (64 KiB is pyftpdlib's default).
        "dtp_handler": type(
            "AirgapData",
            (data,),
            {
                "timeout": config.data_timeout,
                "ac_in_buffer_size": DATA_IN_BUFFER,
                "ac_out_buffer_size": DATA_OUT_BUFFER,
            },
        ),
        "proto_cmds": _commands(base.proto_cmds),
        "timeout": config.idle_timeout,
        "banner": "airgap drop box ready.",
        "max_login_attempts": 3,
        "permit_foreign_addresses": False,
        "permit_privileged_ports": False,
        "masquerade_address": config.masquerade_address,
        "passive_ports": range(config.passive_ports[0], config.passive_ports[1] + 1),
        "passive_dtp": RangedPassive,
        # Downloads over plain FTP go by sendfile(2); pyftpdlib itself keeps it off TLS data
        # connections and ASCII transfers.
        "use_sendfile": True,
    }
    return type("AirgapHandler", (*mixins, base), attributes)


#: Seconds the listener stops accepting after accept() failed (out of descriptors, mostly).
ACCEPT_PAUSE = 0.5


class _Server(FTPServer):  # type: ignore[misc]  # pyftpdlib is untyped
    """pyftpdlib's server, but an error of accept() pauses accepting for a moment: pyftpdlib
    closes the listening socket for good on any error, so one client that ran the process out
    of descriptors (connections, uploads waiting for their hash) stopped the drop box, which
    went on running but never answered again."""

    def handle_error(self) -> None:
        error = sys.exc_info()[1]  # pyftpdlib calls this from its except clause
        if isinstance(error, OSError):
            why = error.strerror or str(error)
            logger.warning("accepting connections: %s; again in %.1f s", why, ACCEPT_PAUSE)
        else:
            logger.exception("accepting connections; again in %.1f s", ACCEPT_PAUSE)
        self.del_channel()  # not readable meanwhile: the loop would spin on the same error
        self.ioloop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if not self._closed:
            self.add_channel()


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, the first address that takes it, as pyftpdlib
    binds one; made before anything else, so that a port in use leaves nothing behind."""
    error: OSError = OSError(f"no address for {host}")
    addresses = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def make_server(services: Services, ioloop: Any, listening: socket.socket) -> Listener:
    server: Any = _Server(listening, handler_class(services), ioloop=ioloop)
    # A backstop against running out of descriptors: each session may hold a control and a
    # data connection and a passive listener. The configured limit is enforced per session.
    server.max_cons = 3 * services.config.max_connections + 16
    server.max_cons_per_ip = services.config.max_connections_per_ip
    listener: Listener = server
    return listener
