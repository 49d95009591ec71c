"""The Recommender's per-row string lists are built once at load with equal strings shared
(``_shared``) and gathered per request with ``_gather``: both must equal the plain lists."""

from __future__ import annotations

import numpy as np

from feedrank.pipeline.recommender import _gather, _shared


def test_shared_equals_the_input_and_shares_equal_strings():
    raw = np.array(["news", "sports", "news", "tech", "sports"], dtype=object).astype(str).tolist()
    got = _shared(raw)
    assert got == raw
    assert got[0] is got[2] and got[1] is got[4]
    assert _shared([]) == []


def test_gather_equals_the_comprehension():
    seq = [f"i{j}" for j in range(50)]
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 37):
        idx = rng.integers(0, 50, n).tolist()
        assert _gather(seq, idx) == [seq[i] for i in idx]
