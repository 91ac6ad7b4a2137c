"""Seeded 7:2:1 train/test/probe split that is stable when rows are added or removed.

Each id is hashed on its own (with the seed), so a row's split never depends on which
other rows exist.
"""

from __future__ import annotations

import hashlib

RATIOS: tuple[tuple[str, float], ...] = (("train", 0.7), ("test", 0.2), ("probe", 0.1))


def split_of(record_id: str, seed: int = 0) -> str:
    """The split ("train", "test" or "probe") of one id under `seed`."""
    digest = hashlib.blake2b(f"{seed}\x00{record_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, share in RATIOS:
        edge += share
        if u < edge:
            return name
    return RATIOS[-1][0]
