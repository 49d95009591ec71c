"""What the oracle knows that logs can tell: the synthetic world's ranking ceilings.

The oracle ranks by the true attractiveness ``a(u, i, t)`` (``data/synth/world.py``):

    logit = b0 + w_pref * log(pref_u(t)[cat_i] + floor) + w_aff * <x_u, y_i> + w_quality * q_i
    a     = sigmoid(logit) * exp(-age / tau_item)

``oracle_ablation`` scores the test impressions with one term of it replaced (the user's
preference by the population mean, the preference frozen at the start of the period, ...)
to show which term carries the oracle's AUC. ``bayes_ceiling`` is the best a ranker that
learns only from the logs could hope for: it knows every term *except the user's topic
preferences* exactly, and infers those from the user's own logged impressions and clicks
before each test impression as the posterior mean under the world's true prior (importance
sampling: ``n_samples`` preference trajectories ``(p0, p1)`` drawn from the world's
Dirichlet prior and drift, weighted by the likelihood of the user's history under the
world's click model). No ranker trained on these logs can beat it in expectation; it is
itself optimistic (the ranker must also learn affinity, quality and the click model).

Pure numpy over a ``Prepared`` dataset and its ``WorldTruth``; metrics on whole requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from feedrank.evaluation.metrics import auc, impression_metrics


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    m = impression_metrics(labels, scores, groups)
    return {"auc": round(float(auc(labels, scores)), 4), "ndcg@10": round(float(m["ndcg@10"]), 4)}


def _rows(prep, truth, users: np.ndarray) -> dict[str, np.ndarray]:
    """Every impression of ``users`` (user codes), sorted by (user, time), as truth indices."""
    ev = prep.events
    imp = np.flatnonzero(ev.mask("impression") & np.isin(ev.user_codes, users) & (ev.request_codes >= 0))
    imp = imp[np.lexsort((ev.ts[imp], ev.user_codes[imp]))]
    return {
        "row": imp,
        "user": ev.user_codes[imp],
        "u": truth.user_index(ev.user_ids[ev.user_codes[imp]].astype(str)),
        "i": truth.item_index(prep.catalog.item_ids[ev.item_idx[imp]].astype(str)),
        "ts": ev.ts[imp],
        "pos": np.maximum(ev.position[imp], 0),
        "label": ev.impression_labels(imp),
        "group": ev.request_codes[imp],
    }


def oracle_ablation(prep, truth, max_test: int = 300_000, seed: int = 0) -> dict[str, Any]:
    """AUC / nDCG@10 on test impressions of the oracle and of the oracle with one term changed."""
    ev, w = prep.events, truth.world
    cfg = w.config
    te = np.flatnonzero(np.isin(np.arange(len(ev)), prep.split.test_idx) & ev.mask("impression") & (ev.request_codes >= 0))
    groups = np.unique(ev.request_codes[te])
    if len(te) > max_test:
        keep = np.random.default_rng(seed).choice(groups, size=max(1, int(len(groups) * max_test / len(te))), replace=False)
        te = te[np.isin(ev.request_codes[te], keep)]
    u = truth.user_index(ev.user_ids[ev.user_codes[te]].astype(str))
    i = truth.item_index(prep.catalog.item_ids[ev.item_idx[te]].astype(str))
    ts, y, g = ev.ts[te], ev.impression_labels(te), ev.request_codes[te]
    cat = w.item_cat[i]
    log_pref = np.log(w.pref_for(u, cat, ts) + cfg.pref_floor)
    aff = np.einsum("nd,nd->n", w.user_vec[u], w.item_vec[i])
    q = w.item_quality[i].astype(np.float64)
    decay = np.exp(-np.maximum(ts - w.item_pub[i], 0.0) / cfg.tau_item_s)

    def a(lp: np.ndarray, af: np.ndarray | float, qq: np.ndarray | float, dec: np.ndarray | float = decay) -> np.ndarray:
        return _sigmoid(cfg.b0 + cfg.w_pref * lp + cfg.w_aff * af + cfg.w_quality * qq) * dec

    mean_pref = np.log(((w.user_p0 + w.user_p1) / 2).mean(axis=0) + cfg.pref_floor)[cat]
    start_pref = np.log(w.user_p0[u, cat] + cfg.pref_floor)
    variants = {
        "oracle": a(log_pref, aff, q),
        "preference at the period's start (no drift)": a(start_pref, aff, q),
        "population-mean preference": a(mean_pref, aff, q),
        "no user-item affinity": a(log_pref, 0.0, q),
        "no item quality": a(log_pref, aff, 0.0),
        "no age decay": a(log_pref, aff, q, 1.0),
        "age decay and quality only": a(mean_pref, 0.0, q),
    }
    return {"n_test": int(len(te)), **{k: _metrics(y, v, g) for k, v in variants.items()}}


def bayes_ceiling(prep, truth, n_users: int = 600, n_samples: int = 2000, seed: int = 0,
                  know: tuple[str, ...] = ("affinity", "quality")) -> dict[str, Any]:
    """Posterior-mean attractiveness for the test impressions of ``n_users`` random test
    users (see the module docstring); ``know`` names the non-preference terms the
    predictor is given exactly (``affinity``, ``quality``; age decay always). Returns the
    metrics of the oracle and of the posterior mean on the same impressions."""
    from feedrank.data.synth.world import _dirichlet  # the world's own prior sampler

    ev, w = prep.events, truth.world
    cfg = w.config
    rng = np.random.default_rng(seed)
    test = np.isin(np.arange(len(ev)), prep.split.test_idx)
    cand = np.unique(ev.user_codes[test & ev.mask("impression")])
    users = np.sort(rng.choice(cand, size=min(n_users, len(cand)), replace=False))
    r = _rows(prep, truth, users)
    alpha = cfg.pref_concentration * cfg.n_categories * np.asarray(w.extra["category_popularity"])
    p0 = _dirichlet(rng, alpha, n_samples)
    rho = rng.random(n_samples)[:, None]
    p1 = (1.0 - rho) * p0 + rho * _dirichlet(rng, alpha, n_samples)   # the world's drift model
    u, i, ts = r["u"], r["i"], r["ts"]
    cat = w.item_cat[i]
    rest = np.full(len(u), cfg.b0)
    if "affinity" in know:
        rest += cfg.w_aff * np.einsum("nd,nd->n", w.user_vec[u], w.item_vec[i])
    if "quality" in know:
        rest += cfg.w_quality * w.item_quality[i]
    decay = np.exp(-np.maximum(ts - w.item_pub[i], 0.0) / cfg.tau_item_s)
    lam = np.clip((ts - cfg.start) / (cfg.end - cfg.start), 0.0, 1.0)[:, None]
    exam = w.examination(r["pos"])[:, None]
    pred = np.zeros(len(u))
    bounds = np.r_[0, np.flatnonzero(r["user"][1:] != r["user"][:-1]) + 1, len(u)]
    for s, e in zip(bounds[:-1], bounds[1:]):
        pref = (1.0 - lam[s:e]) * p0[:, cat[s:e]].T + lam[s:e] * p1[:, cat[s:e]].T            # (n, S)
        a = _sigmoid(rest[s:e, None] + cfg.w_pref * np.log(pref + cfg.pref_floor)) * decay[s:e, None]
        p = np.clip(exam[s:e] * a, 1e-9, 1 - 1e-9)
        ll = np.where(r["label"][s:e, None] > 0, np.log(p), np.log1p(-p))
        cum = np.cumsum(ll, axis=0)
        first = np.searchsorted(ts[s:e], ts[s:e], side="left")                                 # events strictly before
        L = np.where(first[:, None] > 0, cum[np.maximum(first - 1, 0)], 0.0)
        wts = np.exp(L - L.max(axis=1, keepdims=True))
        pred[s:e] = (wts * a).sum(axis=1) / wts.sum(axis=1)
    on_test = test[r["row"]]
    y, g = r["label"][on_test], r["group"][on_test]
    oracle = truth.world.attractiveness(u[on_test], i[on_test], ts[on_test])
    return {"n_users": int(len(users)), "n_test": int(on_test.sum()), "n_samples": n_samples, "knows": list(know),
            "oracle": _metrics(y, oracle, g), "bayes": _metrics(y, pred[on_test], g)}
