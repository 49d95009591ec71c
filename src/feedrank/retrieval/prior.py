"""A freshness prior for retrieval scores, fitted after the towers are trained.

The towers have no item-age input (item vectors live in a static index; an age input would
go stale), so a user's pull toward new items is not in ``u . v``. The prior adds it back
as a separate term of the retrieval logit:

    score(u, i, t) = u . v_i / T  -  w * age_days(i, t)

i.e. the tower's softmax logit times an exponential decay ``exp(-w * age_days)`` of the
click probability (the shape of news attention). ``w`` is one scalar fitted by maximum
likelihood of the full softmax over the items live at each click, on a sample of training
clicks, with the towers fixed (``fit_age_weight``: Newton's method on a convex 1-D
problem). No test data is used; w = 0 recovers the plain tower.

At serving (``rescore_with_prior``, called by ``Recommender._retrieve``) the ANN returns its
top ``pipeline.ann_oversample * ann_k`` by ``u . v``; those plus every recent live item (the
newest ``PRIOR_POOL_MAX``, published within the recent pool's hours) are rescored exactly
and the best ``ann_k`` kept. Since w >= 0, an item in neither set is older than the pool and
below the ANN's cut, so it cannot beat the kept ones by much; the bench measures the
served variant next to exact scoring (``two_tower_age_prior_served``). The index itself is
unchanged (plain item vectors). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86400.0


@dataclass(frozen=True)
class AgePrior:
    weight: float          # w, per day of age, in units of the logit u.v/T
    temperature: float     # T of the towers
    ref_ts: float          # epoch seconds that publish times are measured from (keeps floats small)
    n_clicks: int = 0      # clicks the fit used
    nll_before: float = float("nan")
    nll_after: float = float("nan")

    def to_json(self) -> dict:
        return {"weight": self.weight, "temperature": self.temperature, "ref_ts": self.ref_ts, "n_clicks": self.n_clicks,
                "nll_before": self.nll_before, "nll_after": self.nll_after}

    def scores(self, user_vecs: np.ndarray, item_vecs: np.ndarray, published_at: np.ndarray, now: float) -> np.ndarray:
        """(U, N) retrieval logits u.v/T - w * age_days at ``now`` (unknown publish time = no prior;
        a not-yet-published item counts as age 0)."""
        age = np.nan_to_num(np.maximum(now - published_at, 0.0) / DAY_S, nan=0.0)
        return user_vecs @ item_vecs.T / self.temperature - self.weight * age[None, :]


def fit_age_weight(user_vecs: np.ndarray, item_vecs: np.ndarray, positives: np.ndarray, ts: np.ndarray,
                   published_at: np.ndarray, temperature: float, max_age_s: float | None = None,
                   iters: int = 25, chunk: int = 512, max_items: int = 5000,
                   rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """Maximum-likelihood ``w >= 0`` of ``softmax_j(u.v_j/T - w age_j)`` over the items live at each click.

    user_vecs (Q, D) at the click times ``ts`` (Q,); item_vecs (N, D); positives (Q,) clicked
    rows; published_at (N,) epoch seconds (NaN = unknown: age 0). An item is a candidate at
    ``ts`` when published at or before it (and within ``max_age_s``). Catalogues above
    ``max_items`` are represented by a uniform sample of that many items (plus each click's
    positive): memory (Q, max_items). Returns (w, nll at w=0, nll at w) per click."""
    if len(item_vecs) > max_items:
        rng = rng or np.random.default_rng(0)
        keep = np.union1d(rng.choice(len(item_vecs), size=max_items, replace=False), positives)
        positives = np.searchsorted(keep, positives)
        item_vecs, published_at = item_vecs[keep], published_at[keep]
    known = np.isfinite(published_at)
    base = (user_vecs @ item_vecs.T / temperature).astype(np.float32)            # (Q, N)
    age = ((ts[:, None] - np.where(known, published_at, 0.0)[None, :]) / DAY_S).astype(np.float32)
    age = np.where(known[None, :], age, np.float32(0.0))                          # unknown publish time: no prior
    live = age >= 0
    if max_age_s is not None:
        live &= age <= max_age_s / DAY_S
    rows = np.arange(len(positives))
    live[rows, positives] = True
    age = np.maximum(age, 0.0)

    def stats(w: float) -> tuple[float, float, float]:
        nll = grad = hess = 0.0
        for s in range(0, len(positives), chunk):
            sl = slice(s, s + chunk)
            z = np.where(live[sl], base[sl] - np.float32(w) * age[sl], -np.inf).astype(np.float64)
            m = z.max(axis=1, keepdims=True)
            p = np.exp(z - m)
            tot = p.sum(axis=1, keepdims=True)
            p /= tot
            r = rows[sl]
            ea = (p * age[sl]).sum(1)
            ea2 = (p * age[sl] ** 2).sum(1)
            nll += float((np.log(tot[:, 0]) + m[:, 0] - z[r - s, positives[sl]]).sum())
            grad += float((age[r, positives[sl]] - ea).sum())    # d nll / d w
            hess += float((ea2 - ea**2).sum())
        return nll / len(positives), grad / len(positives), hess / len(positives)

    w = 0.0
    nll0, g, h = stats(0.0)
    nll = nll0
    for _ in range(iters):
        if h <= 1e-12:
            break
        step = g / h
        for _ in range(20):  # damped, projected Newton: w >= 0 (a freshness prior, never a bonus for age)
            cand = max(w - step, 0.0)
            nll_c, g_c, h_c = stats(cand)
            if nll_c <= nll + 1e-12:
                break
            step /= 2
        else:
            break
        done = abs(cand - w) < 1e-6
        w, nll, g, h = cand, nll_c, g_c, h_c
        if done:
            break
    return float(w), float(nll0), float(nll)


def fit_age_prior(model, catalog, clicks, temperature: float, history_len: int, item_vecs: np.ndarray,
                  max_age_s: float | None, seed: int, n_clicks: int = 2000) -> AgePrior:
    """Fit the prior on a sample of the newest half of the training ``clicks`` (a
    ``ClickLog``), towers fixed: user vectors from each click's history before it."""
    from feedrank.retrieval.encode import encode_users

    rng = np.random.default_rng(seed)
    order = np.argsort(clicks.ts, kind="stable")
    newest = order[len(order) // 2 :]
    pick = np.sort(rng.choice(newest, size=min(n_clicks, len(newest)), replace=False))
    users, ts, pos = clicks.user_codes[pick], clicks.ts[pick], clicks.items[pick]
    hist = clicks.histories(users, ts, history_len)
    uvec = encode_users(model, catalog, hist, ts, item_vecs=item_vecs)
    w, nll0, nll1 = fit_age_weight(uvec, item_vecs, pos, ts, catalog.published_at, temperature, max_age_s, rng=rng)
    ref = float(np.nanmax(catalog.published_at)) if np.isfinite(catalog.published_at).any() else 0.0
    return AgePrior(w, temperature, ref, len(pick), round(nll0, 5), round(nll1, 5))


def rescore_with_prior(prior: AgePrior, user_vec: np.ndarray, cand: np.ndarray, cand_vecs: np.ndarray,
                       published_at: np.ndarray, now: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of candidates (M,) by ``u.v/T - w * age_days`` at ``now``: cand_vecs (M, D),
    published_at (M,). Returns (items (k,), scores (k,) float32), best first. Serving uses
    it on the ANN's top ``oversample * k`` by ``u.v`` plus every recent item: an item outside
    both is old and below the ANN cut, so it cannot beat them by much."""
    if not len(cand):
        return cand.astype(np.int64), np.zeros(0, dtype=np.float32)
    age = np.nan_to_num(np.maximum(now - published_at, 0.0) / DAY_S, nan=0.0)
    s = cand_vecs @ user_vec / prior.temperature - prior.weight * age
    k = min(k, len(cand))
    top = np.argpartition(-s, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
    top = top[np.lexsort((cand[top], -s[top]))]
    return cand[top].astype(np.int64), s[top].astype(np.float32)
