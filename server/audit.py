"""The audit log: one JSON object a line in ``state/audit.jsonl``, and a line on stderr.

Events: ``login``, ``login-failed``, ``ban``, ``upload-started``, ``upload-completed``,
``upload-incomplete``, ``publish``, ``quarantine``, ``download``, ``delete``, ``rename``,
``refused``, ``start``, ``stop``. Callers pass fields explicitly; this module never receives a
password (there is no field for it) and strips control characters from every string, so a
hostile file or user name cannot forge a log line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger("airgap.server")

Field = str | int | float | bool | None


def _clean(value: Field) -> Field:
    if isinstance(value, str):
        return "".join(c if c.isprintable() else "?" for c in value)[:1024]
    return value


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def record(self, event: str, **fields: Field) -> None:
        entry: dict[str, Field] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
        }
        entry.update({k: _clean(v) for k, v in fields.items()})
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
        logger.info("%s %s", event, " ".join(f"{k}={entry[k]}" for k in sorted(fields)))

    def close(self) -> None:
        with self._lock:
            self._file.close()
