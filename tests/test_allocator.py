"""A labeling process keeps the memory it frees: the next image's tensors reuse those pages
instead of faulting in fresh zeroed ones (measured as minor page faults in a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CYCLES = 10
# A process that allocates, fills and frees a 40 MiB block (above the largest threshold glibc's
# malloc picks on its own, so by default it is mapped and unmapped every time) CYCLES times,
# then prints the minor page faults those cycles took.
SCRIPT = f"""
import resource, sys
import numpy as np
from pipeline.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def cycle():
    block = np.ones(10 << 20, dtype=np.float32)
    del block
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({CYCLES}):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return int(done.stdout)


def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default >= CYCLES  # every cycle faults its block in again (a 4 KiB or 2 MiB page at a time)
    assert kept * 10 <= default, (default, kept)
