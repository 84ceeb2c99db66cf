"""Data connections: a full disk or quota answers 552, a TCP reset answers 426, never 226.

pyftpdlib answers 426 with the errno text for a failed write and 226 when a data socket (plain
or TLS) is reset, as if the upload were complete. Neither decides anything here (the bundle
check does), but the client must hear the truth: 552 means "resume later", 426 "resume now".
With ``--max-rate``, :class:`Throttle` goes on top of either connection class.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftp.producers import FileProducer

from airgap.server.ftp.base import DataChannelAPI
from airgap.server.ftp.reuse import resumed

logger = logging.getLogger("airgap.server")
PAUSE_MIN = 0.005  # seconds ahead of the limit before a pause is worth a turn of the loop
TLS_RECORD = 16 * 1024  # the most plaintext one TLS record carries
# Records drained per read event. Measured on a 1 GiB FTPS upload: 256 KiB took 15% less server
# CPU than a record per event, and went 15% faster; 1 MiB (out of cache by the time it is
# written and hashed) took more CPU than either.
TLS_DRAIN = 256 * 1024
REUSE_REFUSED = "522 Data connection refused: it must resume the control connection's TLS session."


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

    A TLS recv returns one record (16 KiB at most), so :meth:`_receive` takes every record
    already there, up to :data:`TLS_DRAIN`, in one read event: one file write, not sixteen
    turns of the loop. A close or reset met after some data waits in ``_ended`` and is raised
    by the next recv, on the same event once that data is written, so it goes up exactly as
    it would have alone.
    """

    _reset = False
    _ended: Exception | None = None
    _resp: tuple[str, Callable[..., None]] | tuple[()]

    def handle_read_event(self) -> None:
        super().handle_read_event()
        if self._ended is not None and not self._closed:
            super().handle_read_event()  # the socket may never be readable again

    def recv(self, buffer_size: int) -> bytes:
        try:
            data: bytes = self._receive(buffer_size)
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

    def _receive(self, buffer_size: int) -> bytes:
        ended, self._ended = self._ended, None
        if ended is not None:
            raise ended
        if not isinstance(self.socket, SSL.Connection):
            data: bytes = self.socket.recv(buffer_size)
            return data  # a plain recv returns all there is already
        # pyOpenSSL mallocs what it is asked for, and one call returns one record at most.
        data = self.socket.recv(min(buffer_size, TLS_RECORD))
        if not data:
            return data
        chunks, total, limit = [data], len(data), min(buffer_size, TLS_DRAIN)
        # Whole records only: the rest of one would wait in OpenSSL, unseen by the IO loop.
        while limit - total >= TLS_RECORD:
            try:
                data = self.socket.recv(TLS_RECORD)
            except SSL.WantReadError:
                break  # no whole record left
            except (SSL.Error, OSError) as exc:
                self._ended = exc
                break
            if not data:
                break
            chunks.append(data)
            total += len(data)
        return b"".join(chunks)

    def push_with_producer(self, producer: Any) -> None:
        # A download without sendfile(2) (TLS, or throttled) sends a read of its file a turn of
        # the loop: pyftpdlib reads 64 KiB, a quarter of what the channel sends at once. Not in
        # ASCII mode, whose line ending conversion costs the square of a read's size.
        if isinstance(producer, FileProducer) and producer.type == "i":
            producer.buffer_size = self.ac_out_buffer_size
        super().push_with_producer(producer)

    def close(self) -> None:
        # OpenSSL drops from its cache the session of a TLS connection freed without a TLS
        # shutdown (the error path, a refusal): it is the control connection's, and a client
        # resuming by session id (TLS 1.2, no tickets) could not open its next data connection.
        if isinstance(self.socket, SSL.Connection):
            with contextlib.suppress(Exception):
                self.socket.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        super().close()

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
        def send(self, data: bytes) -> int:
            # A TLS write finishes a handshake still under way by itself, and sends, without
            # handle_ssl_established ever being asked: the loop's next event finishes it.
            if self._ssl_accepting:
                return 0
            sent: int = super().send(data)
            # pyOpenSSL writes with partial writes allowed, and then one SSL_write writes one
            # 16 KiB record: the rest goes here while the socket takes it, not one turn of
            # the loop a record. A 545 MB download to curl measured here: 1.84 server CPU-s
            # before, 1.23 with this, 1.01 with reads of 256 KiB (push_with_producer) too.
            view = memoryview(data)
            while 0 < sent < len(view):
                try:
                    more: int = self.socket.send(view[sent:])
                except (SSL.Error, OSError):
                    break  # full, or failed: the next turn's send meets it, as pyftpdlib's
                self.tot_bytes_sent += more  # what pyftpdlib's send counts (STAT, stalls)
                sent += more
            return sent

        def handle_ssl_established(self) -> None:
            """Before the first byte: a data connection that did not resume its control
            connection's session is refused, with the session (:mod:`.reuse`)."""
            control = self.cmd_channel
            if getattr(control, "tls_reuse_required", False) and not resumed(self.socket):
                logger.warning(
                    "%s: TLS data connection without its control connection's session refused",
                    control.remote_ip,
                )
                self._error = True  # closed at once: no TLS shutdown owed to it
                self._resp = (REUSE_REFUSED, logger.warning)  # after the close (RFC 959)
                self.close()
                control.close_when_done()  # drops whatever transfer was waiting for it
                return
            super().handle_ssl_established()

    return TlsData


class Throttle(DTPHandler):  # type: ignore[misc]  # pyftpdlib is untyped
    """At most ``limit`` bytes per second each way, kept over the whole transfer.

    pyftpdlib's ThrottledDTPHandler lets the first second through unpaced and forgets what
    went over each second's count, some 10% above the limit on a 150 MB upload measured here;
    this keeps one account from the first byte. A pause takes the channel off the IO loop for
    as long as it is ahead (never sleeping the loop), the way pyftpdlib's throttle does.
    """

    limit = 0
    _started: float | None = None
    _moved = 0
    _pause: Any = None

    def use_sendfile(self) -> bool:
        return False  # sendfile(2) would move the bytes past send()

    def recv(self, buffer_size: int) -> bytes:
        # A quarter second's worth at most: a 1 MiB read would pace (and end) in long bursts.
        chunk: bytes = super().recv(min(buffer_size, max(self.limit // 4, TLS_RECORD)))
        self._account(len(chunk))
        return chunk

    def send(self, data: bytes) -> int:
        # As recv: a quarter second's worth at most, not a whole 256 KiB read at once.
        sent: int = super().send(data[: max(self.limit // 4, TLS_RECORD)])
        self._account(sent)
        return sent

    def _account(self, count: int) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        self._moved += count
        ahead = self._moved / self.limit - (now - self._started)
        if ahead > PAUSE_MIN and self._pause is None and not self._closed:
            self.del_channel()
            self._pause = self.ioloop.call_later(ahead, self._resume, _errback=self.handle_error)

    def _resume(self) -> None:
        self._pause = None
        if self._closed:  # closed past close() below: pyftpdlib's TLS error path
            return
        self.add_channel(events=self.ioloop.READ if self.receive else self.ioloop.WRITE)

    def close(self) -> None:
        if self._pause is not None and not self._pause.cancelled:
            self._pause.cancel()
        self._pause = None
        super().close()


def throttled(data: type, bytes_per_second: int) -> type:
    """``data`` held to ``bytes_per_second`` each way, per connection (no sendfile then).

    The throttle comes first in the MRO, so it counts what the classes below it pass up (after
    TLS, after the reset check).
    """
    return type("ThrottledData", (Throttle, data), {"limit": bytes_per_second})
