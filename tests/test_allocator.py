import os
import platform

import pytest
import torch

from helpers.allocator import keep_freed_memory


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_tensor_memory_stays_in_the_process_for_reuse():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process, then cached
    block = torch.ones(6 << 20)  # 24 MB: glibc's default would map and unmap it
    before_free = _resident_bytes()
    del block
    assert _resident_bytes() > before_free - (8 << 20)
