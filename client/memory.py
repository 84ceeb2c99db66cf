"""How the C allocator treats the MiB-sized pieces a transfer streams through its stages.

glibc gives a freed block at the top of a thread's heap back to the kernel as soon as the free
space there passes its trim threshold, which it sets to twice the largest block it has seen:
2 MiB for a stream of 1 MiB pieces. The next piece then takes fresh pages from the kernel, and
every 4 KiB of it costs a page fault and a page of zeros. Decoding a GiB took about 50,000
such faults, against 8,500 with the thresholds below. Raising them only keeps pages the
process already used: its memory stays at its peak instead of falling back between pieces,
and that peak is still what the pipeline's bounded links allow.
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 64 << 20
MMAP_THRESHOLD = 32 << 20


def keep_freed_pieces() -> bool:
    """Tell glibc to keep freed memory for the next piece; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
