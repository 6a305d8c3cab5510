"""Exact duplicates (same bytes) and near duplicates (same picture, different bytes), as groups of row indices."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def exact_groups(sha256: list[str]) -> list[list[int]]:
    """Rows whose files have the same content hash, in groups of two or more, in order of first appearance."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(sha256):
        rows[digest].append(i)
    return [group for group in rows.values() if len(group) > 1]


def close_pairs(signatures: np.ndarray, threshold: float, block: int = 512) -> list[tuple[int, int, float]]:
    """Every pair i < j whose signatures lie within `threshold` (Euclidean), with its distance.

    All pairs are compared, a block of rows at a time (memory block x N floats): quadratic, a few seconds for
    20,000 images on two CPU cores, about a minute for 100,000.
    """
    sig = np.asarray(signatures, dtype=np.float32)
    sq = (sig * sig).sum(1)
    found: list[tuple[int, int, float]] = []
    for start in range(0, len(sig), block):
        d2 = sq[start:start + block, None] + sq[None, :] - 2.0 * (sig[start:start + block] @ sig.T)
        rows, cols = np.nonzero(d2 <= threshold * threshold + 1e-6)  # 1e-6: float32 rounding of identical rows
        rows += start
        keep = cols > rows
        for i, j in zip(rows[keep], cols[keep]):
            found.append((int(i), int(j), float(np.sqrt(max(d2[i - start, j], 0.0)))))
    return found


def components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of two or more nodes (union-find), each sorted, in order of their first node."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for _, g in sorted(groups.items()) if len(g) > 1]


def near_groups(signatures: np.ndarray, sha256: list[str], threshold: float) -> list[tuple[list[int], float]]:
    """Groups of rows showing the same picture in two or more different files, with the largest link distance.

    Exact copies are compared once (one row per content): they are reported as exact duplicates already, and
    a group is only "near" when it holds at least two different contents. Every copy of a content in a group
    is listed in it. Blank images are left out.
    """
    first: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        first.setdefault(digest, i)
    # Blank images (zero signature) all look alike whatever their colour; they are reported as blank instead.
    reps = [i for i in first.values() if signatures[i].any()]
    pairs = close_pairs(signatures[reps], threshold)
    copies: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(sha256):
        copies[digest].append(i)
    comps = components(len(reps), [(a, b) for a, b, _ in pairs])
    which = {r: k for k, comp in enumerate(comps) for r in comp}
    widest = [0.0] * len(comps)
    for a, _, d in pairs:
        widest[which[a]] = max(widest[which[a]], d)
    return [(sorted(i for r in comp for i in copies[sha256[reps[r]]]), widest[k]) for k, comp in enumerate(comps)]
