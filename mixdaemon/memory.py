"""How the process's C library hands out memory (glibc's malloc): set once, where a process
starts — the command line, and the daemon's Ray workers."""
from __future__ import annotations

import ctypes
import sys


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def one_malloc_arena() -> None:
    """One glibc malloc arena for all threads. Otherwise each thread that allocates (the job's
    pool, the read-ahead, the daemon's workers) gets an arena of its own, up to 8 per core, and
    each keeps the song-long blocks its thread freed: a 60-minute match job peaked at 1.12 GB with
    the default arenas against 0.76 GB with one, and ran no slower (docs/BENCHMARKS.md, "Songs of
    any length"). The arrays are large and few, so threads seldom wait on the one arena's lock.
    No effect where the C library is not glibc."""
    libc = _glibc()
    if libc is not None:
        m_arena_max = -8
        libc.mallopt(m_arena_max, 1)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of mapping every large array afresh
    and unmapping it when freed: each new mapping is zeroed page by page by the kernel, which cost
    a 3-minute 4-stem transfer about a third of its wall time (docs/BENCHMARKS.md). The process
    then holds its peak memory until it exits, which a one-shot job does soon; the daemon does not
    use this. No effect where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 2**26)
