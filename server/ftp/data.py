"""Data connections: a full disk or quota answers 552, a TCP reset answers 426, never 226.

pyftpdlib answers 426 with the errno text for a failed write and 226 when a data socket (plain
or TLS) is reset, as if the upload were complete. Neither decides anything here (the bundle
check does), but the client must hear the truth: 552 means "resume later", 426 "resume now".
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable

from OpenSSL import SSL
from pyftpdlib.handlers.ftp.data import DTPHandler

from airgap.server.ftp.base import DataChannelAPI

logger = logging.getLogger("airgap.server")


class SpaceAwareData(DataChannelAPI):
    """A full disk or an exceeded quota answers 552, not 426."""

    def handle_error(self) -> None:
        exc = sys.exc_info()[1]  # pyftpdlib calls this inside its except block
        # pyftpdlib wraps write errors in _FileReadWriteError(err) without copying errno.
        cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "quota exceeded" if cause.errno == errno.EDQUOT else "not enough disk space"
            self._resp = (f"552 Upload stopped: {why}; resume later.", logger.warning)
            self.close()
            return
        super().handle_error()


class ResetAwareData(DTPHandler):  # type: ignore[misc]  # pyftpdlib is untyped
    """A TCP reset is an incomplete upload (426), never a 226.

    In a TLS data connection this class sits below pyftpdlib's SSL mixin, which turns a reset
    into a plain close: the reset is noted here on its way up, then reported on that close.
    """

    _reset = False
    _resp: tuple[str, Callable[..., None]] | tuple[()]

    def recv(self, buffer_size: int) -> bytes:
        try:
            data: bytes = self.socket.recv(buffer_size)
        except ConnectionResetError:
            self._reset = True
            self.handle_close()
            return b""
        except SSL.SysCallError as exc:
            self._reset = exc.args[:1] == (errno.ECONNRESET,)
            raise
        except OSError:
            return super().recv(buffer_size)  # type: ignore[no-any-return]
        if not data:
            self.handle_close()
        return data

    def handle_close(self) -> None:
        if self._reset and self.receive and not self._closed:
            self.transfer_finished = False
            self._resp = ("426 Connection reset; upload incomplete.", logger.info)
            self.close()
            return
        super().handle_close()


class PlainData(SpaceAwareData, ResetAwareData):
    pass


def tls_data_class() -> type:
    """The TLS data connection: pyftpdlib's, between the two halves above."""
    from pyftpdlib.handlers.ftps.data import TLS_DTPHandler

    class TlsData(SpaceAwareData, TLS_DTPHandler, ResetAwareData):  # type: ignore[misc]
        pass

    return TlsData
