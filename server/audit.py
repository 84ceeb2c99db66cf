"""The audit log: one JSON object a line in ``state/audit.jsonl``, and a line on stderr.

Events: ``login``, ``login-failed``, ``ban``, ``logout`` (a session ended because
``airgap user`` changed or removed its account), ``upload-started``, ``upload-completed``,
``upload-incomplete``, ``publish``, ``quarantine``, ``download``, ``delete``, ``rename``,
``refused``, ``start``, ``stop``. Callers pass fields explicitly; this module never receives a
password (there is no field for it) and strips control characters from every string, so a
hostile file or user name cannot forge a log line; on stderr a value that is not a plain token
is quoted (as a JSON string), so it cannot forge a field either.

Each line is one ``write`` on an ``O_APPEND`` descriptor, so a line is whole or absent. A line
that cannot be written (a full disk) is reported on stderr and dropped: the drop box keeps
serving rather than stopping every session on a log it cannot extend.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

logger = logging.getLogger("airgap.server")

Field = str | int | float | bool | None
_PLAIN = re.compile(r"[\w.,:/@+~-]+")  # no space, quote or "=": a value that cannot look like more


def _clean(value: Field) -> Field:
    if isinstance(value, str):
        return "".join(c if c.isprintable() else "?" for c in value)[:1024]
    return value


def _shown(value: Field) -> str:
    """``value`` for the stderr line: as it is when a plain token, else quoted as a JSON
    string, so that no file or user name (spaces and ``=`` are allowed in them) reads as
    another field."""
    if not isinstance(value, str):
        return str(value)
    return value if _PLAIN.fullmatch(value) else json.dumps(value, ensure_ascii=False)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._failing = False

    def record(self, event: str, **fields: Field) -> None:
        entry: dict[str, Field] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
        }
        entry.update({k: _clean(v) for k, v in fields.items()})
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True)
        self._append((line + "\n").encode("ascii"))
        told = " ".join([event, *(f"{k}={_shown(entry[k])}" for k in sorted(fields))])
        logger.info("%s", told)

    def _append(self, data: bytes) -> None:
        with self._lock:
            try:
                if self._fd < 0:
                    raise OSError("closed")
                end = os.fstat(self._fd).st_size
                if os.write(self._fd, data) != len(data):
                    os.ftruncate(self._fd, end)  # the disk filled up mid-line: no half lines
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                if not self._failing:
                    logger.error("audit log %s: cannot write: %s", self.path, exc.strerror or exc)
                self._failing = True
                return
            if self._failing:
                logger.warning("audit log %s: writing again; lines were lost", self.path)
            self._failing = False

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
