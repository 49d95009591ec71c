"""Classic collaborative-filtering baselines for ``feedrank bench retrieval``: ALS and item-kNN
from ``implicit`` (0.7), tuned on the training period only, with fold-in for the replay.

    tuned = tune_cf(train_clicks, n_items, seed)            # grid on a validation tail of the train clicks
    als = fit_als(train_clicks, n_items, tuned.als, seed)   # on all train clicks, the chosen values
    u = als.fold_in(history_items)                          # user factors from a history, items fixed
    scores = als.item_factors @ u

Tuning: the training clicks are split by time; the newest ``valid_fraction`` is the
validation slice. Each setting is fitted on the older part and scored on the validation
users (those with a validation click) at the validation boundary: candidates = every item
minus the user's older clicks, relevant = the user's validation clicks; the setting with
the best recall@10 (then recall@100) wins. The test side is never read. A user with no
click at all gets the popularity ranking (a zero factor vector scores every item 0), in
tuning and evaluation alike, so the baseline is not handicapped by users it cannot know.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from feedrank.evaluation.metrics import recall_at_k

ALS_GRID = {"factors": (32, 128), "regularization": (0.01, 0.1, 1.0), "alpha": (1.0, 10.0, 40.0),
            "iterations": (15, 40)}
KNN_GRID = (20, 100, 500)  # neighbours kept per item (cosine similarity)


@dataclass(frozen=True)
class AlsParams:
    """implicit's ``AlternatingLeastSquares`` settings. implicit 0.7 weighs an observed
    (user, item) by confidence ``alpha * clicks`` and every unobserved one by 1 (preference
    0): at ``alpha`` 1 a single click weighs no more than a non-click."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15


@dataclass
class AlsModel:
    """Fitted ALS: ``item_factors`` (N, F), ``user_factors`` (U, F) float32 and the ``params``."""

    item_factors: np.ndarray
    user_factors: np.ndarray
    params: AlsParams

    def __post_init__(self) -> None:
        y = self.item_factors.astype(np.float64)
        self._yty = y.T @ y
        self._y = y

    def fold_in(self, items: np.ndarray) -> np.ndarray:
        """(F,) the user factors that minimise implicit ALS's loss for a user who clicked
        ``items`` (repeats count), item factors fixed: ``(Y'Y + Y' (C - I) Y + reg I)^-1 Y' C p``
        with ``C = alpha * clicks`` on the clicked items (implicit 0.7's weighting; equal to its
        ``recalculate_user`` without CG). No clicks: zeros."""
        items = np.asarray(items, dtype=np.int64)
        f = self._y.shape[1]
        if not len(items):
            return np.zeros(f, dtype=np.float32)
        uniq, counts = np.unique(items, return_counts=True)
        yh = self._y[uniq]
        conf = self.params.alpha * counts
        a = self._yty + (yh * (conf - 1.0)[:, None]).T @ yh + self.params.regularization * np.eye(f)
        return np.linalg.solve(a, yh.T @ conf).astype(np.float32)


@dataclass
class KnnModel:
    """Item-item cosine similarities (N, N) sparse, ``k`` neighbours per item."""

    similarity: Any
    k: int

    def scores(self, items: np.ndarray) -> np.ndarray:
        """(N,) sum of the similarities of every item to the history ``items``."""
        items = np.asarray(items, dtype=np.int64)
        if not len(items):
            return np.zeros(self.similarity.shape[0], dtype=np.float32)
        return np.asarray(self.similarity[items].sum(axis=0), dtype=np.float32).ravel()


@dataclass(frozen=True)
class CfTuning:
    """The chosen settings and every grid row (``als_grid``, ``knn_grid``: dicts with the
    setting and its validation recall@10/100), the validation boundary and size."""

    als: AlsParams
    knn_k: int
    als_grid: list[dict]
    knn_grid: list[dict]
    valid_from: float
    valid_users: int

    def to_json(self) -> dict:
        return {"als": asdict(self.als), "knn_k": self.knn_k, "valid_from": self.valid_from,
                "valid_users": self.valid_users, "als_grid": self.als_grid, "knn_grid": self.knn_grid}


def available() -> bool:
    try:
        import implicit  # noqa: F401
        import scipy.sparse  # noqa: F401
    except ImportError:
        return False
    return True


def _matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
    from scipy.sparse import csr_matrix

    m = csr_matrix((np.ones(len(items), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def fit_als(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, params: AlsParams, seed: int) -> AlsModel:
    """ALS on click counts ``(users, items)`` (one row per click)."""
    from implicit.cpu.als import AlternatingLeastSquares

    m = _matrix(users, items, n_users, n_items)
    model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization, alpha=params.alpha,
                                    iterations=params.iterations, random_state=seed, calculate_training_loss=False,
                                    num_threads=1)  # one thread: on a busy machine a pool waits on its slowest worker
    model.fit(m, show_progress=False)
    return AlsModel(np.asarray(model.item_factors, dtype=np.float32), np.asarray(model.user_factors, dtype=np.float32),
                    params)


def fit_knn(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int) -> KnnModel:
    """Item-item cosine (``implicit.nearest_neighbours.CosineRecommender``) with ``k`` neighbours."""
    from implicit.nearest_neighbours import CosineRecommender

    model = CosineRecommender(K=k)
    model.fit(_matrix(users, items, n_users, n_items), show_progress=False)
    return KnnModel(model.similarity.tocsr(), k)


def ranked(scores: np.ndarray, exclude: np.ndarray, popularity: np.ndarray, cold: bool, k: int = 100) -> list[int]:
    """Top ``k`` items by ``scores`` (by ``popularity`` when ``cold``: the user has no click),
    minus ``exclude``."""
    s = np.asarray(popularity if cold else scores, dtype=np.float64).copy()
    s[exclude] = -np.inf
    m = min(k, len(s))
    top = np.argpartition(-s, m - 1)[:m]
    top = top[np.lexsort((top, -s[top]))]
    return [int(i) for i in top if np.isfinite(s[i])]


def tune_cf(clicks, n_items: int, seed: int, valid_fraction: float = 0.2, max_users: int = 2000) -> CfTuning:
    """Grid-search ALS (``ALS_GRID``) and item-kNN (``KNN_GRID``) on a validation tail of
    the training ``clicks`` (a ``ClickLog``): fit on clicks before ``valid_from`` (the
    ``1 - valid_fraction`` time quantile), recall@10 on the clicks after it."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if not len(clicks.items):
        raise ValueError("tune_cf: no training clicks")
    n_users = len(clicks.starts)
    valid_from = float(np.quantile(clicks.ts, 1.0 - valid_fraction))
    old = clicks.ts < valid_from
    fu, fi = clicks.user_codes[old], clicks.items[old]
    vu = np.unique(clicks.user_codes[~old])
    if len(vu) > max_users:
        vu = np.sort(np.random.default_rng(seed).choice(vu, size=max_users, replace=False))
    past = [fi[fu == u] for u in vu]
    rel = [set(clicks.items[(~old) & (clicks.user_codes == u)].tolist()) - set(p.tolist()) for u, p in zip(vu, past)]
    pop = np.bincount(fi, minlength=n_items).astype(np.float64)

    def score(model_scores) -> dict:
        lists = [ranked(model_scores(j), past[j], pop, not len(past[j])) for j in range(len(vu))]
        return {"recall@10": round(float(recall_at_k(lists, rel, 10)), 4),
                "recall@100": round(float(recall_at_k(lists, rel, 100)), 4)}

    als_rows = []
    for f, reg, alpha, its in itertools.product(*ALS_GRID.values()):
        p = AlsParams(f, reg, alpha, its)
        model = fit_als(fu, fi, n_users, n_items, p, seed)
        als_rows.append({**asdict(p), **score(lambda j: model.item_factors @ model.user_factors[vu[j]])})
    knn_rows = []
    for k in KNN_GRID:
        knn = fit_knn(fu, fi, n_users, n_items, k)
        knn_rows.append({"k": k, **score(lambda j: knn.scores(past[j]))})
    key = lambda r: (r["recall@10"], r["recall@100"])  # noqa: E731
    best = max(als_rows, key=key)
    return CfTuning(AlsParams(best["factors"], best["regularization"], best["alpha"], best["iterations"]),
                    max(knn_rows, key=key)["k"], als_rows, knn_rows, valid_from, int(len(vu)))
