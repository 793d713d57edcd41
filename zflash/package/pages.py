"""Dropping pages of a read-only file map from this process's resident set.

Why: a sender streams an image or package from a map of it (no copy in user space, as the
stock fastboot client sends), and every page it touched would otherwise stay counted in
the host's memory until the map closes: RSS would grow with the image size. MADV_DONTNEED
on a read-only file map only unmaps the pages; the page cache keeps them and a later touch
maps them again, so no data is ever at stake.
"""

from __future__ import annotations

import mmap


def release_pages(mapped: mmap.mmap, start: int, end: int) -> None:
    """Drop the pages covering bytes [start, end) of ``mapped`` from the resident set."""
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(end, len(mapped))
    if end <= first:
        return
    try:
        mapped.madvise(mmap.MADV_DONTNEED, first, end - first)
    except (AttributeError, OSError, ValueError):
        pass  # no madvise here, or a closed map: only the resident set is at stake
