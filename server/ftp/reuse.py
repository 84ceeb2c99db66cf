"""TLS data connections bound to their control connection: the session must be resumed.

A passive data port is open to anyone who reaches it first (pyftpdlib checks only that the
address is the control connection's, which a neighbour behind the same NAT shares). vsftpd's
``require_ssl_reuse`` closes that gap, and so does this: each control connection gets a TLS
context of its own (its own session cache and ticket keys), so the only session a data
connection can resume is the one its control connection negotiated, and a data connection
that did not resume it is refused before it carries a byte.

pyOpenSSL has no public call saying whether a handshake resumed a session; its binding of
OpenSSL's ``SSL_session_reused`` is used, and :func:`checkable` says whether it is there.
"""

from __future__ import annotations

from typing import Any


def _binding() -> Any:
    from OpenSSL import SSL

    return getattr(SSL, "_lib", None)


def checkable() -> bool:
    """Whether this pyOpenSSL lets :func:`resumed` be asked."""
    lib = _binding()
    return lib is not None and hasattr(lib, "SSL_session_reused")


def resumed(connection: Any) -> bool:
    """Whether the handshake of this ``OpenSSL.SSL.Connection`` resumed a session."""
    handle = getattr(connection, "_ssl", None)
    return handle is not None and bool(_binding().SSL_session_reused(handle))
