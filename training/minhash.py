"""Near-duplicate detection: MinHash signatures, LSH banding and clusters of similar texts.

Texts become sets of character 5-grams of their normalised form (short tickets and prompts have
too few words for word n-grams). MinHash signatures and LSH banding find candidate pairs without
comparing all of them; a candidate whose exact Jaccard similarity reaches the threshold is joined
into a cluster (union-find), so similarity is transitive here.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_PRIME = (1 << 31) - 1  # hashes below 2^31 keep a*x + b inside uint64
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation kept, runs of white space collapsed."""
    return _SPACE.sub(" ", text.lower()).strip()


def shingles(text: str, size: int = 5) -> set[str]:
    """The character `size`-grams of the normalised text (the whole text if shorter)."""
    text = normalise(text)
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def _shingle_hash(shingle: str) -> int:
    digest = hashlib.blake2b(shingle.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _PRIME


@dataclass(frozen=True)
class MinHasher:
    """`num_perm` random hash functions `(a*x + b) mod p`, fixed by `seed`."""

    num_perm: int = 256
    seed: int = 0

    def _coefficients(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        rng = random.Random(self.seed)
        a = np.array([rng.randrange(1, _PRIME) for _ in range(self.num_perm)], dtype=np.uint64)
        b = np.array([rng.randrange(0, _PRIME) for _ in range(self.num_perm)], dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str]) -> npt.NDArray[np.uint64]:
        """One row of `num_perm` minimum hashes per text."""
        a, b = self._coefficients()
        rows = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        for index, text in enumerate(texts):
            hashed = np.array([_shingle_hash(s) for s in shingles(text)], dtype=np.uint64)
            rows[index] = ((a[:, None] * hashed[None, :] + b[:, None]) % _PRIME).min(axis=1)
        return rows


def lsh_shape(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows), bands * rows == num_perm, that rarely miss a pair at `threshold`.

    A pair with Jaccard similarity s shares at least one band with probability
    1 - (1 - s^rows)^bands, which climbs steeply around (1/bands)^(1/rows). That midpoint is put
    well below the threshold: extra candidates cost one exact comparison each, a missed pair
    would let near-duplicates through.
    """
    shapes = [(num_perm // rows, rows) for rows in range(1, num_perm + 1) if num_perm % rows == 0]
    below = [s for s in shapes if (1 / s[0]) ** (1 / s[1]) <= 0.7 * threshold] or shapes[-1:]
    return max(below, key=lambda shape: (1 / shape[0]) ** (1 / shape[1]))


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, left: int, right: int) -> None:
        roots = sorted((self.find(left), self.find(right)))
        self.parent[roots[1]] = roots[0]


def candidate_pairs(signatures: npt.NDArray[np.uint64], threshold: float) -> set[tuple[int, int]]:
    """Pairs (i < j) that share an LSH band: a superset, with high probability, of the pairs
    whose similarity reaches `threshold`."""
    count, num_perm = signatures.shape
    bands, rows = lsh_shape(num_perm, threshold)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for index in range(count):
            buckets[signatures[index, band * rows : (band + 1) * rows].tobytes()].append(index)
        for members in buckets.values():
            candidates.update(
                (members[i], members[j])
                for i in range(len(members))
                for j in range(i + 1, len(members))
            )
    return candidates


def estimated_similarity(left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64]) -> float:
    """The MinHash estimate of two texts' Jaccard similarity: the share of equal minima."""
    return float(np.mean(left == right))


def jaccard(left: set[str], right: set[str]) -> float:
    """The exact Jaccard similarity of two shingle sets."""
    return len(left & right) / len(left | right) if left or right else 1.0


def clusters(texts: Sequence[str], threshold: float, hasher: MinHasher | None = None) -> list[int]:
    """For each text, the index of the first text of its near-duplicate cluster.

    LSH proposes the pairs; each is confirmed on the exact Jaccard similarity of its shingles.
    """
    if not texts:
        return []
    hasher = hasher or MinHasher()
    sets = [shingles(text) for text in texts]
    found = _UnionFind(len(texts))
    for left, right in sorted(candidate_pairs(hasher.signatures(texts), threshold)):
        if jaccard(sets[left], sets[right]) >= threshold:
            found.union(left, right)
    return [found.find(index) for index in range(len(texts))]
