"""Keys and passwords stay in this process: no core file of it, and no other process of the
same user reads its memory.

A crash, a SIGQUIT or a debugger would otherwise write the whole address space to a core
file (in the working directory, which may be the USB stick, or to systemd-coredump's store):
an identity's scalar, a signing key and the drop box password with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys

PR_SET_DUMPABLE = 4  # prctl(2), from linux/prctl.h
PR_GET_DUMPABLE = 3


def keep_out_of_dumps() -> bool:
    """No core file (RLIMIT_CORE 0, for good) and, on Linux, not dumpable: neither the
    kernel's core handler nor ptrace by a process of the same user. False where the second
    could not be asked for."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return bool(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
