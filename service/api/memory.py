"""Give the memory of decoded photos back to the system when a request is done.

Pillow holds pictures in 16 MiB blocks from malloc. glibc serves a freed block's size from its heap next time
(its mmap threshold follows the largest block freed), and each worker thread has a heap of its own, so every
thread that once decoded a large photo kept its memory: `bench/decode_memory.py --server` measured a peak of
2657 MiB and 2043 MiB still held after 40 uploads at the pixel limit, against 949 MiB and 267 MiB with a fixed
1 MiB threshold (docs/security.md). Blocks over the threshold are then mapped and unmapped per picture.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def unmap_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (process-wide); False where there is no glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")
    return done
