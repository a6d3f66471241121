"""The daemon gives freed heap back to the OS between cycles (issue 12, item 11)."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from scimsync import memory

BLOCK = 1_000  # above pymalloc's 512-byte limit: each block comes from glibc's malloc
BLOCKS = 60_000  # 60 MB
KEEP_EVERY = 64  # one survivor per 64 KB pins every page it shares with freed blocks


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to load")
def test_freed_blocks_pinned_by_survivors_go_back_to_the_os() -> None:
    memory.release_freed()
    before = rss_mb()
    blocks = [bytes([i % 256]) * BLOCK for i in range(BLOCKS)]
    survivors = blocks[::KEEP_EVERY]
    del blocks
    held = rss_mb() - before
    # Without trimming, malloc keeps the freed pages: this is what the soak saw as steps.
    assert held > 30, f"the allocator already gave the memory back ({held:.1f} MB held)"
    assert memory.release_freed()
    after = rss_mb() - before
    assert after < held / 2, f"{held:.1f} MB held before trimming, {after:.1f} MB after"
    assert len(survivors) == BLOCKS // KEEP_EVERY + (BLOCKS % KEEP_EVERY > 0)
