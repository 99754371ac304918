"""64-bit hashing of token sequences in numpy, shared by de-duplication (MinHash shingles,
LSH bucket keys) and the quality model (hashed n-gram features).

    units = np.frombuffer("今天天氣很好".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ngram_hashes(units, 3)   # 4 uint64 hashes, one per character trigram

All arithmetic wraps modulo 2^64 (numpy's uint64), so it needs no big integers.
"""

from __future__ import annotations

import numpy as np

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier for rolling n-gram hashes


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a 64-bit value's bits (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of n consecutive units (or of all of them if fewer)."""
    n = min(n, len(units))
    m = len(units) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h = h * POLY + units[j:j + m]
    return mix64(h)
