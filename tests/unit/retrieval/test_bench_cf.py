"""CF baselines of the retrieval bench: ALS fold-in solves implicit's own user problem, the
tuning never fits on its validation slice, users without clicks get popularity."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.bench import retrieval_cf as cf
from feedrank.features.history import ClickLog

pytest.importorskip("implicit")


def _clicks(seed: int = 0, n_users: int = 40, n_items: int = 60, n: int = 800):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = (users % 6) * 10 + rng.integers(0, 10, n)  # six taste groups of ten items
    return users, items, rng.uniform(0, 100, n)


@pytest.mark.parametrize("alpha", [1.0, 20.0])
def test_fold_in_equals_implicits_recalculate_user(alpha: float):
    from implicit.cpu.als import AlternatingLeastSquares

    users, items, _ = _clicks()
    mat = cf._matrix(users, items, 40, 60)
    model = AlternatingLeastSquares(factors=8, regularization=0.1, alpha=alpha, iterations=5, random_state=0,
                                    use_cg=False, num_threads=1)
    model.fit(mat, show_progress=False)
    als = cf.AlsModel(np.asarray(model.item_factors), np.asarray(model.user_factors), cf.AlsParams(8, 0.1, alpha, 5))
    for u in (0, 7):
        want = np.asarray(model.recalculate_user(u, mat[u])).ravel()
        assert np.allclose(als.fold_in(items[users == u]), want, atol=1e-4)
    assert als.fold_in(np.zeros(0, np.int64)).tolist() == [0.0] * 8


def test_tuning_fits_on_the_older_clicks_only_and_picks_the_best_row(monkeypatch):
    users, items, ts = _clicks(1)
    log = ClickLog.build(users, ts, items, 40)
    seen = []
    real = cf.fit_als

    def spy(u, i, n_users, n_items, params, seed):
        seen.append(len(i))
        return real(u, i, n_users, n_items, params, seed)

    monkeypatch.setattr(cf, "fit_als", spy)
    monkeypatch.setattr(cf, "ALS_GRID", {"factors": (4, 8), "regularization": (0.1,), "alpha": (1.0, 20.0),
                                         "iterations": (5,)})
    tuned = cf.tune_cf(log, 60, seed=0, valid_fraction=0.25)
    assert set(seen) == {int((ts < tuned.valid_from).sum())} and len(seen) == 4
    best = max(tuned.als_grid, key=lambda r: (r["recall@10"], r["recall@100"]))
    assert (tuned.als.factors, tuned.als.alpha) == (best["factors"], best["alpha"])
    assert best["recall@10"] > 0.1  # the taste groups are learnable
    assert tuned.knn_k in cf.KNN_GRID and len(tuned.knn_grid) == len(cf.KNN_GRID)
    with pytest.raises(ValueError, match="valid_fraction"):
        cf.tune_cf(log, 60, seed=0, valid_fraction=1.0)


def test_ranked_serves_popularity_to_users_without_clicks_and_skips_excluded_items():
    pop = np.array([5.0, 9.0, 1.0, 7.0])
    scores = np.array([0.1, 0.0, 0.9, 0.5])
    assert cf.ranked(scores, np.array([3]), pop, cold=True, k=3) == [1, 0, 2]
    assert cf.ranked(scores, np.array([2]), pop, cold=False, k=2) == [3, 0]
    knn = cf.fit_knn(*_clicks()[:2], 40, 60, k=5)
    s = knn.scores(np.array([3, 4]))
    assert s.shape == (60,) and s[:10].sum() > s[10:].sum()  # neighbours come from the same taste group
