"""The memory a decoding process asks for (jielong.runtime.decoding_memory), each case in a
fresh interpreter: torch reads its huge-page switch once, at its first allocation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import os, resource, torch
from jielong.runtime import decoding_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def resident():  # bytes
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

with decoding_memory():
    inside = os.environ.get("THP_MEM_ALLOC_ENABLE")
    x = torch.ones(16 << 20)  # 64 MB
    huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
               if line.startswith("AnonHugePages"))
    held = resident()
    del x
    freed = held - resident()
    before = faults()
    y = torch.ones(16 << 20)  # the same size again
    again = faults() - before
print(inside, os.environ.get("THP_MEM_ALLOC_ENABLE"), huge, freed >> 20, again)
"""


def probe(**env) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": SRC, **env}).stdout.split()
    return out


def glibc_linux() -> bool:
    try:
        return sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # no such name here: not glibc
        return False


@pytest.mark.skipif(not glibc_linux(), reason="2 MB pages and mallopt: glibc Linux only")
def test_decoding_memory_gives_torch_huge_pages_and_keeps_freed_memory():
    inside, after, huge, freed_mb, again = probe()
    assert (inside, after) == ("1", "None")  # torch's switch on inside, not left to children
    modes = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if modes.exists() and "[never]" not in modes.read_text():
        assert int(huge) >= 32 * 1024  # kB: most of the 64 MB tensor in 2 MB pages
    # a freed 64 MB tensor stays with the process and the next one takes it without faulting
    # its pages in anew (16,384 of 4 KB)
    assert int(freed_mb) < 8 and int(again) < 1000, (freed_mb, again)


@pytest.mark.skipif(not glibc_linux(), reason="the default's faults are glibc's behaviour")
def test_decoding_memory_is_off_with_jielong_no_huge_pages():
    inside, after, huge, freed_mb, again = probe(JIELONG_NO_HUGE_PAGES="1")
    assert (inside, after) == ("None", "None")
    # glibc's default hands a 64 MB block back to the system and faults the next one in
    assert int(freed_mb) > 56 and int(again) > 8000, (freed_mb, again)
