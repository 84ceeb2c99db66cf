"""A step's own peak RSS. os.wait4's ru_maxrss of a process the benchmark spawned starts at the
benchmark's own peak, which Linux hands on at exec (a child of a 400 MB process reports 400 MB
however little it uses), so it only bounds the figure from above. GNU time (/usr/bin/time),
small itself, forks the step and reads its peak from the kernel: that figure is the step's."""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from pathlib import Path

TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measured(argv: Sequence[str], record: Path) -> list[str]:
    """``argv`` run so that :func:`peak_mb` can read its peak RSS from ``record``."""
    return [TIME, "-f", "%M", "-o", str(record), *argv] if TIME else list(argv)


def peak_mb(record: Path, usage: resource.struct_rusage) -> float:
    """The peak RSS :func:`measured` recorded, else os.wait4's (an upper bound)."""
    kib = int(record.read_text().split()[-1]) if TIME else usage.ru_maxrss
    return kib / 1024
