"""Keep the memory a labeling process frees for its next image, instead of handing it back to the
operating system and faulting it in again (glibc's malloc)."""

from __future__ import annotations

import ctypes

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """By default glibc serves every block above its mmap threshold (128 KiB, rising to at most
    32 MiB) with a fresh mapping that it unmaps when the block is freed, and trims the free top of
    its heap. A labeling actor allocates the same large tensors for every image (label tiles of up
    to 32 MiB, the networks' activations), so every image faults those pages in again, zeroed by
    the kernel: about a quarter of the label map's time on a CPU. With both thresholds at 1 GiB
    the pages stay with the process; its resident memory stays at its peak, which its memory
    budget must allow anyway.

    Returns whether the C library took both settings (False where it is not glibc; nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
