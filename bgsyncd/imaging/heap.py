"""Freed pixel buffers go back to the system: the C heap's threshold for large blocks, fixed.

A 24-megapixel photo passes through buffers of tens of megabytes (Pillow's
image blocks, numpy's strips in :mod:`~bgsyncd.imaging.edges`). glibc serves
such a block by ``mmap`` and returns it on ``free`` — until the first one is
freed: then it raises its threshold (up to 32 MiB) and serves later ones from
the heap, where each worker thread's arena keeps what it freed. With three
workers that kept 50 to 200 MiB resident for nothing (``bench/upload.py``:
peak RSS 444 MiB instead of 258 MiB). Fixing the threshold at 128 KiB (the
default's starting point) keeps the dynamic rise off, so every large buffer
is unmapped when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's <malloc.h>
LARGE_BLOCK_BYTES = 128 * 1024


def return_large_blocks() -> bool:
    """Have the C heap unmap every large block when freed; False where that cannot be set.

    glibc only: another C library (musl, on Alpine) has no ``mallopt`` or
    another meaning for it, and keeps its own behaviour.
    """
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        gnu = libc.gnu_get_libc_version  # present in glibc alone
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    gnu.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
