"""`feedrank bench retrieval`: retrieval quality side by side, cold start, and ANN speed.

    quality = run_quality("var/ml100k", cfg)       # two-tower vs popularity vs ALS (+ oracle)
    speed = run_speed(n_items=1_000_000, dim=64)    # flat / hnsw / ivfpq build, memory, latency

Quality protocol (same as ``feedrank eval``): events split by time; users with clicks in
the test period (at most ``max_users``); each method ranks the items live in the test
period, minus what the user clicked before the boundary; relevant = the user's test
clicks. ``cold`` = relevant items with no train click (new since the cut-off, or never
clicked), ``warm`` = the rest; recall@100 is reported on each. That is the boundary
protocol (every candidate scored once, at the split); ``replay`` adds the point-in-time
replay of test requests (``bench/retrieval_replay.py``), the protocol that matches serving
and the one the ``headline`` vs-oracle ratio uses.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.bench import retrieval_cf as cf
from feedrank.config import FeedrankConfig
from feedrank.evaluation.metrics import ndcg_at_k_lists, recall_at_k

KS = (10, 50, 100)
PRIOR_FITS = ("train", "frozen-tail")
SERVED_PRIORS = ("two_tower_age_prior", "two_tower_prior", "two_tower_prior_ctr", "two_tower_prior_feedback")
PRIOR_METHODS = SERVED_PRIORS
FEEDBACK_FITS = ("holdout-tail", "same")


def _metrics(lists: list[list[int]], relevant: list[set[int]], warm: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": round(float(recall_at_k(lists, relevant, k)), 4) for k in KS}
    out["ndcg@10"] = round(float(ndcg_at_k_lists(lists, relevant, 10)), 4)
    cold_rel = [{i for i in r if not warm[i]} for r in relevant]
    warm_rel = [{i for i in r if warm[i]} for r in relevant]
    c = recall_at_k(lists, cold_rel, 100)
    w = recall_at_k(lists, warm_rel, 100)
    out["recall@100_cold"] = None if np.isnan(c) else round(float(c), 4)
    out["recall@100_warm"] = None if np.isnan(w) else round(float(w), 4)
    return out


def _top_lists(scores: np.ndarray, allowed_mask: np.ndarray, past: list[set[int]], k: int = 100) -> list[list[int]]:
    """Rows of (U, N) ``scores`` -> top-k item lists among allowed items, minus past clicks."""
    s = np.where(allowed_mask[None, :], scores, -np.inf)
    m = min(k + max((len(p) for p in past), default=0), s.shape[1])
    top = np.argpartition(-s, m - 1, axis=1)[:, :m]
    order = np.take_along_axis(s, top, 1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, 1)
    out = []
    for j, row in enumerate(top.tolist()):
        out.append([i for i in row if i not in past[j] and np.isfinite(s[j, i])][:k])
    return out


def run_quality(data_dir: str | Path, cfg: FeedrankConfig, oracle: bool = True, max_users: int = 3000,
                show_progress: bool = True, say: Callable[[str], None] = print, replay_requests: int = 3000,
                served_prior: str = "two_tower_prior", prior_fit: str = "train",
                cold_user_weights: bool = False, feedback_fit: str = "holdout-tail", category_term: bool = True,
                new_item_terms: bool = False) -> dict[str, Any]:
    """Train the two-tower on the train side of ``data_dir`` and measure it against
    popularity, ALS (``implicit``) and, for synthetic worlds, the oracle: at the split
    boundary (``boundary``) and, with ``replay_requests`` > 0, replaying that many test
    requests at their own time (``replay``, ``bench/retrieval_replay.py``). The served
    score uses the prior ``served_prior`` (a method name; ``two_tower_prior`` = age +
    popularity, what ``feedrank train`` fits; ``two_tower_prior_ctr`` adds the CTR terms;
    ``two_tower_prior_feedback`` adds the clicker-vector term of ``retrieval/item_feedback.py``);
    ``cold_user_weights`` fits each prior's weights for users without history too. ``prior_fit``: how the
    prior is fitted: ``train`` (what ``feedrank train`` does, ``retrieval.prior_fit``: by default
    on the last ``split.test_fraction`` of the train clicks with towers trained without them,
    ``pipeline/build.fit_retrieval_prior``; ``in_sample``: the newest half with the served towers;
    each click with the state just before it) or ``frozen-tail`` (the last
    ``split.test_fraction`` of the train clicks, scored by the served towers with the state
    frozen at the start of that tail, as the boundary protocol scores the test side).
    ``feedback_fit``: the feedback prior's weights are fitted on that held-out tail with the
    towers trained without it (``holdout-tail``) or like the others (``same``). Every prior
    but the age-only one has the category term with ``category_term`` (what ``feedrank
    train`` fits) and, with ``new_item_terms``, the ``NewItemTerms`` (needs the held-out
    towers). Every prior is applied to the served towers' logits."""
    if feedback_fit not in FEEDBACK_FITS:
        raise ValueError(f"feedback_fit {feedback_fit!r}: expected one of {', '.join(FEEDBACK_FITS)}")
    if prior_fit not in PRIOR_FITS:
        raise ValueError(f"prior_fit {prior_fit!r}: expected one of {', '.join(PRIOR_FITS)}")
    if served_prior not in SERVED_PRIORS:
        raise ValueError(f"served_prior {served_prior!r}: expected one of {', '.join(SERVED_PRIORS)}")
    from feedrank.bench.retrieval_replay import ReplayInputs, run_replay
    from feedrank.bench.retrieval_replay import replay_requests as sample_requests
    from feedrank.evaluation.offline import live_items
    from feedrank.pipeline.build import (describe_category_share, fit_retrieval_prior, holdout_tail_towers, item_content,
                                         learn_max_item_age, prepare, shown_not_clicked)
    from feedrank.retrieval.counters import CounterReplay, creator_codes
    from feedrank.retrieval.encode import encode_items, encode_users
    from feedrank.retrieval.item_feedback import FeedbackEvents
    from feedrank.retrieval.prior import PriorFitData
    from feedrank.retrieval.train import train_two_tower
    from feedrank.training.common import seed_everything, setup_threads

    setup_threads(cfg.training.threads)
    rng = seed_everything(cfg.training.seed)
    prep = prepare(data_dir, cfg, say=say)
    ev, split, catalog = prep.events, prep.split, prep.catalog
    n_items = len(catalog)
    is_train = np.zeros(len(ev), dtype=bool)
    is_train[split.train_idx] = True
    is_test = ~is_train
    clicks = ev.click_log(np.flatnonzero(is_train))
    t = time.perf_counter()
    content, content_kind = item_content(cfg, catalog, say)
    tt, report = train_two_tower(cfg.retrieval, catalog, clicks, len(prep.vocabs["category"]), len(prep.vocabs["subcategory"]),
                                 rng, show_progress, content=content, shown=shown_not_clicked(ev, is_train))
    train_s = time.perf_counter() - t
    say(f"two-tower trained in {train_s:.1f}s ({content_kind} content)")
    max_age = learn_max_item_age(cfg.retrieval.max_item_age_hours, clicks, catalog)

    test_clicks = is_test & ev.mask("click")
    if (test_clicks & (ev.request_codes >= 0)).any():
        test_clicks &= ev.request_codes >= 0
    users = np.unique(ev.user_codes[test_clicks])
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(cfg.training.seed).choice(users, size=max_users, replace=False))
    allowed = live_items(catalog.published_at, split.boundary, float(split.test.ts_max or split.boundary), max_age)
    allowed_mask = np.ones(n_items, dtype=bool) if allowed is None else np.isin(np.arange(n_items), allowed)
    past = [set(clicks.items[clicks.starts[u]:clicks.ends[u]].tolist()) for u in users]
    tu, ti = ev.user_codes[test_clicks], ev.item_idx[test_clicks]
    relevant = [set() for _ in users]
    pos = {int(u): j for j, u in enumerate(users)}
    for u, i in zip(tu.tolist(), ti.tolist()):
        j = pos.get(u)
        if j is not None and i not in past[j]:
            relevant[j].add(i)
    warm = np.bincount(clicks.items, minlength=n_items) > 0

    out: dict[str, Any] = {"dataset": str(data_dir), "source": prep.dataset.meta.source, "n_items": n_items,
                           "n_users_evaluated": int(len(users)), "train_clicks": int(len(clicks.items)),
                           "content_encoder": content_kind, "two_tower_train_s": round(train_s, 1),
                           "cold_share_of_relevant": round(float(np.mean([not warm[i] for r in relevant for i in r])), 4)
                           if any(relevant) else None, "methods": {}}
    vecs = encode_items(tt, catalog)
    hist = clicks.final_histories(cfg.retrieval.history_len)[users]
    uvec = encode_users(tt, catalog, hist, np.full(len(users), split.boundary), item_vecs=vecs)
    out["methods"]["two_tower"] = _metrics(_top_lists(uvec @ vecs.T, allowed_mask, past), relevant, warm)
    pop = np.bincount(clicks.items, minlength=n_items).astype(np.float64)  # train clicks: counts at the boundary
    train_imp = is_train & ev.mask("impression")
    fit_data = PriorFitData(impressions=(ev.item_idx[train_imp], ev.ts[train_imp]))
    base_data = None
    if prior_fit == "frozen-tail":
        frac = cfg.split.test_fraction
        tail_from = float(np.quantile(clicks.ts, 1.0 - frac))
        base_data = PriorFitData(fit_from=tail_from, frozen=True)
        fit_data = replace(fit_data, fit_from=tail_from, frozen=True)
        out["prior_fit_from"] = tail_from
    at_boundary = CounterReplay(n_items, clicks.items, clicks.ts, *fit_data.impressions, creator_codes(catalog.creators))
    at_boundary.advance(np.inf)  # it holds train events only: the counters at the boundary
    counters = at_boundary.snapshot()
    enc = lambda h, ts: encode_users(tt, catalog, h, ts, item_vecs=vecs)  # noqa: E731
    fb_train = FeedbackEvents.of_clicks(clicks, enc, cfg.retrieval.history_len)  # train clicks only: fit + boundary
    has_hist = (clicks.ends - clicks.starts)[users] > 0
    out["users_without_history"] = int((~has_hist).sum())
    priors = {}
    # the held-out towers (trained once): the prior as `feedrank train` fits it, and the feedback prior's fit
    want_holdout = (prior_fit == "train" and cfg.retrieval.prior_fit == "holdout_tail") or feedback_fit == "holdout-tail"
    holdout = holdout_tail_towers(cfg, prep, is_train, content, show_progress, say) if want_holdout else None
    out["prior_fit_towers"] = None if holdout is None else holdout.to_json()
    main_holdout = holdout if prior_fit == "train" and cfg.retrieval.prior_fit == "holdout_tail" else None
    out["prior_fit"] = prior_fit if prior_fit != "train" else f"train ({'in_sample' if main_holdout is None else 'holdout_tail'})"
    fb_holdout = holdout if feedback_fit == "holdout-tail" else None
    fb_data = replace(base_data or PriorFitData(), feedback=fb_train)
    if fb_holdout is not None:  # clicker vectors of every train click from the held-out towers
        fb_enc = lambda h, ts: encode_users(fb_holdout.model, catalog, h, ts, item_vecs=fb_holdout.item_vecs)  # noqa: E731
        fb_data = PriorFitData(feedback=FeedbackEvents.of_clicks(clicks, fb_enc, cfg.retrieval.history_len))
    out["feedback_fit"] = "holdout-tail" if fb_holdout is not None else "same"
    fits = [("two_tower_age_prior", False, base_data, main_holdout), ("two_tower_prior", True, base_data, main_holdout),
            ("two_tower_prior_ctr", True, fit_data, main_holdout), ("two_tower_prior_feedback", True, fb_data, fb_holdout)]
    if served_prior != "two_tower_prior_ctr":  # fitted w_ctr = w_creator = 0 on every dataset (docs/retrieval.md): skipped
        fits = [f for f in fits if f[0] != "two_tower_prior_ctr"]
    for name, use_pop, data, held in fits:
        prior = fit_retrieval_prior(cfg, tt, catalog, clicks, vecs, max_age, held, popularity=use_pop, data=data,
                                    category=category_term and use_pop,
                                    **({"cold_users": True, "select_cold": False} if cold_user_weights else {}),
                                    new_items=new_item_terms and use_pop and held is not None)
        priors[name] = prior
        out[name] = prior.to_json()
        for tag, pr in (("", prior), (" (users without history)", prior.cold_user)):
            if pr is not None:
                say(f"{name}{tag}: w_age = {pr.weight:.4f} per day, w_pop = {pr.pop_weight:.4f}, "
                    f"w_pop2 = {pr.pop2_weight:.4f}, w_trend = {pr.trend_weight:.4f}, w_ctr = {pr.ctr_weight:.4f}, w_creator = {pr.creator_weight:.4f}, "
                    f"w_fb = {pr.feedback_weight:.4f} (s {pr.feedback_strength:g}), w_cat = {pr.category_weight:.4f}, "
                    f"new items {None if pr.new is None else pr.new.to_json()}, tower x{pr.tower_weight:.3f} "
                    f"(nll {pr.nll_before:.4f} -> {pr.nll_after:.4f}, {pr.n_clicks} train clicks), category share: "
                    f"{describe_category_share(pr)}")
        out["methods"][name] = _metrics(_top_lists(_prior_scores(prior, uvec, has_hist, vecs, catalog.published_at,
                                                                 split.boundary, _with_feedback(counters, prior, fb_train),
                                                                 prior.user_affinity(hist, catalog.cat_idx), catalog.cat_idx),
                                                   allowed_mask, past), relevant, warm)
    prior = priors[served_prior]
    out["served_prior"] = served_prior
    counters = _with_feedback(counters, prior, fb_train)
    if prior.cold_user is not None:  # the same prior without its weights for users without history, for comparison
        out["methods"]["two_tower_prior_one_weight_set"] = _metrics(_top_lists(_prior_scores(
            replace(prior, cold_user=None), uvec, has_hist, vecs, catalog.published_at, split.boundary, counters,
            prior.user_affinity(hist, catalog.cat_idx), catalog.cat_idx),
            allowed_mask, past), relevant, warm)
    out["methods"]["two_tower_prior_served"] = _metrics(
        _served_lists(prior, uvec, has_hist, vecs, catalog.published_at, counters, split.boundary, allowed_mask, past, cfg,
                      affinity=prior.user_affinity(hist, catalog.cat_idx), categories=catalog.cat_idx),
        relevant, warm)
    out["methods"]["popularity"] = _metrics(_top_lists(np.broadcast_to(pop, (len(users), n_items)), allowed_mask, past),
                                            relevant, warm)
    cf_models = {}
    if cf.available():  # ALS + item-kNN tuned on a validation tail of the train clicks; users without clicks: popularity
        t = time.perf_counter()
        tuning = cf.tune_cf(clicks, n_items, cfg.training.seed)
        out["cf_tuning"] = {**tuning.to_json(), "seconds": round(time.perf_counter() - t, 1)}
        say(f"CF tuned on the train tail: ALS {tuning.als}, item-kNN k={tuning.knn_k} ({out['cf_tuning']['seconds']}s)")
        n_users = len(clicks.starts)
        untuned = cf.fit_als(clicks.user_codes, clicks.items, n_users, n_items, cf.AlsParams(), cfg.training.seed)
        out["methods"]["als_untuned"] = _metrics(_top_lists(untuned.user_factors[users] @ untuned.item_factors.T,
                                                            allowed_mask, past), relevant, warm)
        cf_models["als"] = cf.fit_als(clicks.user_codes, clicks.items, n_users, n_items, tuning.als, cfg.training.seed)
        cf_models["item_knn"] = cf.fit_knn(clicks.user_codes, clicks.items, n_users, n_items, tuning.knn_k)
        for name, model in cf_models.items():
            got = [cf.ranked(_cf_scores(model, np.fromiter(past[j], np.int64, len(past[j]))),
                             np.flatnonzero(~allowed_mask), pop, not has_hist[j], k=100 + len(past[j])) for j in range(len(users))]
            out["methods"][name] = _metrics([[i for i in row if i not in past[j]][:100] for j, row in enumerate(got)],
                                            relevant, warm)
    if oracle and (Path(prep.dataset.root) / "truth").exists():
        oracle_scores = _oracle_scores(prep, ev, users, split.boundary)
        out["methods"]["oracle"] = _metrics(_top_lists(oracle_scores, allowed_mask, past), relevant, warm)
        o = out["methods"]["oracle"]["recall@100"]
        out["two_tower_recall@100_vs_oracle"] = round(out["methods"]["two_tower"]["recall@100"] / o, 4) if o else None
        for name in [m for m in PRIOR_METHODS if m in priors] + ["two_tower_prior_served"]:
            out[f"{name}_recall@100_vs_oracle"] = round(out["methods"][name]["recall@100"] / o, 4) if o else None
    for name in ("two_tower", "two_tower_prior_served"):
        tw = out["methods"][name]
        if tw["recall@100_cold"] is not None and tw["recall@100_warm"]:
            out[f"{name}_cold_vs_warm_recall@100"] = round(tw["recall@100_cold"] / tw["recall@100_warm"], 4)
    _say_methods(out["methods"], say, "boundary")
    if replay_requests > 0:
        truth = None
        if oracle and (Path(prep.dataset.root) / "truth").exists():
            from feedrank.data.synth.truth import WorldTruth

            truth = WorldTruth.load(prep.dataset.root)
        reqs = sample_requests(ev, is_test, replay_requests, cfg.training.seed)
        t = time.perf_counter()
        fb_all = FeedbackEvents.of_clicks(ev.click_log(), enc, cfg.retrieval.history_len) if prior.feedback_strength else None
        base = priors["two_tower_prior"] if prior.feedback_strength else None
        out["replay"] = run_replay(ReplayInputs(ev, catalog, enc, vecs, prior, max_age, cfg, warm, split.boundary, truth,
                                                feedback=fb_all, prior_without_feedback=base, cf=cf_models), reqs)
        out["replay"]["seconds"] = round(time.perf_counter() - t, 1)
        _say_methods(out["replay"]["methods"], say, f"replay of {len(reqs)} requests")
    out["headline"] = _headline(out)
    return out


def _with_feedback(counters, prior, events) -> Any:
    """``counters`` plus the items' mean clicker vectors from ``events`` (all before now)
    when ``prior`` has the feedback term."""
    from feedrank.retrieval.item_feedback import FeedbackReplay

    if not prior.feedback_strength:
        return counters
    fb = FeedbackReplay(len(counters.clicks), events)
    fb.advance(np.inf)
    return replace(counters, feedback=fb.means(prior.feedback_strength))


def _say_methods(methods: dict[str, dict], say: Callable[[str], None], title: str) -> None:
    say(f"  protocol: {title}")
    for name, m in methods.items():
        say(f"  {name:24s} recall@10 {m['recall@10']}  @50 {m['recall@50']}  @100 {m['recall@100']}  "
            f"nDCG@10 {m['ndcg@10']}  cold@100 {m['recall@100_cold']}  warm@100 {m['recall@100_warm']}"
            + (f"  new1h@100 {m['recall@100_new1h']}" if "recall@100_new1h" in m else ""))


def _headline(out: dict[str, Any]) -> dict[str, Any]:
    """The figure issue #3 asks for, with the protocol it comes from: the replay when it ran
    (each request scored at its own time with the live counters, as serving does), else the
    boundary protocol."""
    block = out.get("replay") or out
    methods = block["methods"]
    h: dict[str, Any] = {"protocol": "replay" if "replay" in out else "boundary",
                         "why": "serving scores each request at its own time with the user's clicks so far and live "
                                "counters; the replay does the same, the boundary protocol scores once at the split",
                         "served_recall@10": methods["two_tower_prior_served"]["recall@10"] if "two_tower_prior_served" in methods else None,
                         "served_recall@100": methods["two_tower_prior_served"]["recall@100"] if "two_tower_prior_served" in methods else None,
                         "popularity_recall@10": methods["popularity"]["recall@10"]}
    if "oracle" in methods and methods["oracle"]["recall@100"] and h["served_recall@100"] is not None:
        h["oracle_recall@100"] = methods["oracle"]["recall@100"]
        h["served_recall@100_vs_oracle"] = round(h["served_recall@100"] / methods["oracle"]["recall@100"], 4)
    return h


def _prior_scores(prior, uvec: np.ndarray, has_hist: np.ndarray, vecs: np.ndarray, published_at: np.ndarray, now: float,
                  counters, affinity: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """(U, N) exact served scores at ``now``: users without history (``has_hist`` False) get
    the prior's cold-user weights; ``affinity`` (U, C) / ``categories`` (N,): the category term."""
    out = prior.scores(uvec, vecs, published_at, now, counters=counters, affinity=affinity, categories=categories)
    if (~has_hist).any() and prior.cold_user is not None:
        out[~has_hist] = prior.cold_user.scores(uvec[~has_hist], vecs, published_at, now, counters=counters,
                                                affinity=affinity[~has_hist], categories=categories)
    return out


def _served_lists(prior, uvec: np.ndarray, has_hist: np.ndarray, vecs: np.ndarray, published_at: np.ndarray, counters,
                  now: float, allowed_mask: np.ndarray, past: list[set[int]], cfg: FeedrankConfig,
                  k: int = 100, affinity: np.ndarray | None = None, categories: np.ndarray | None = None) -> list[list[int]]:
    """What serving does with the prior (``retrieval/served.py``, as in ``pipeline/candidates.py``):
    the ANN's top ``ann_oversample * ann_k`` by u.v (exact here), the recent pool and the
    popular list, rescored by u.v/T + prior at ``now``, top ``k``."""
    from feedrank.retrieval.served import popular_pool_size, prior_pool, served_top

    p = cfg.pipeline
    over = _top_lists(uvec @ vecs.T, allowed_mask, past, k=p.ann_oversample * p.ann_k)
    hours = max(p.fresh_hours, p.followed_hours)
    pool = prior_pool(published_at, allowed_mask, now, hours, counters.clicks, popular_pool_size(prior, p.ann_k))
    out = []
    for j, row in enumerate(over):
        past_rows = np.fromiter(past[j], dtype=np.int64, count=len(past[j]))
        out.append(served_top(prior, uvec[j], np.asarray(row, dtype=np.int64), pool, vecs, published_at, now, k, counters,
                              past_rows, has_history=bool(has_hist[j]),
                              affinity=None if affinity is None else affinity[j], categories=categories).tolist())
    return out


def _cf_scores(model, history: np.ndarray) -> np.ndarray:
    """(N,) a CF baseline's scores for a user who clicked ``history``: ALS folds the
    history in (item factors fixed), item-kNN sums similarities."""
    if isinstance(model, cf.AlsModel):
        return model.item_factors @ model.fold_in(history)
    return model.scores(history)


def _oracle_scores(prep, ev, users: np.ndarray, ts: float) -> np.ndarray:
    """(U, N) true attractiveness at the split boundary (synthetic worlds)."""
    from feedrank.data.synth.truth import WorldTruth

    truth = WorldTruth.load(prep.dataset.root)
    ids = prep.catalog.item_ids.astype(str)
    out = np.zeros((len(users), len(ids)), dtype=np.float32)
    for j, u in enumerate(ev.user_ids[users].astype(str)):
        out[j] = truth.attractiveness(np.full(len(ids), u, dtype=object), ids, ts)
    return out


def _latency(index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Search one query at a time: (ids (Q, k), per-query milliseconds)."""
    lat = []
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for j in range(len(queries)):
        t = time.perf_counter()
        _, got = index.search(queries[j : j + 1], k, allowed=allowed)
        lat.append((time.perf_counter() - t) * 1000.0)
        ids[j, : got.shape[1]] = got[0]
    return ids, lat


def _recall(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(truth, got)]))


def speed_corpus(n_items: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors: items (N, dim) and queries (Q, dim) float32 around 1000 centres."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    x = np.empty((n_items, dim), dtype=np.float32)
    for s in range(0, n_items, 200_000):  # chunked: bounded temporary memory at 1M+
        e = min(n_items, s + 200_000)
        x[s:e] = centers[rng.integers(0, 1000, e - s)] + 0.5 * rng.standard_normal((e - s, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centers[rng.integers(0, 1000, n_queries)] + 0.5 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def run_speed(n_items: int = 1_000_000, dim: int = 64, n_queries: int = 500, seed: int = 0,
              kinds: tuple[str, ...] = ("flat", "hnsw", "ivfflat", "ivfpq"), ef_search: tuple[int, ...] = (100, 128, 192, 256),
              nprobe: tuple[int, ...] = (8, 16, 32, 64, 128), hnsw_m: int = 32, ef_construction: int = 80,
              live_share: float = 0.9, target_recall: float = 0.95, ivf_refine: int = 4,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """ANN speed on a synthetic clustered corpus (N, dim) of unit vectors.

    Per kind: build seconds (all faiss threads), index MB (serialised), and per setting
    (HNSW efSearch, IVF nprobe) p50/p99 ms per query at batch 1 with one faiss thread,
    recall@100 vs exact. Also the same with an ``allowed`` filter of ``live_share`` of
    the items (what serving does: expired items are filtered). ``chosen`` = per kind
    the fastest setting with recall@100 >= ``target_recall``, with its speed-up over exact."""
    import faiss

    from feedrank.retrieval.index import IndexParams, _set_hnsw_ef, build_index

    x, q = speed_corpus(n_items, dim, n_queries, seed)
    live = np.sort(np.random.default_rng(seed + 1).choice(n_items, size=int(live_share * n_items), replace=False))
    threads = faiss.omp_get_max_threads()
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, 100)  # batched, all threads: the reference, not timed
    live_bits = np.packbits(np.isin(np.arange(n_items), live), bitorder="little")  # referenced while sel is used
    sel = faiss.IDSelectorBitmap(n_items, faiss.swig_ptr(live_bits))
    _, truth_live = exact.search(q, 100, params=faiss.SearchParameters(sel=sel))
    del exact, sel, live_bits
    out: dict[str, Any] = {"n_items": n_items, "dim": dim, "n_queries": n_queries, "build_threads": threads,
                           "query_threads": 1, "live_share": live_share, "target_recall@100": target_recall, "kinds": {}}
    for kind in kinds:
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        index = build_index(x, kind, seed=seed, params=IndexParams(hnsw_m=hnsw_m, hnsw_ef_construction=ef_construction,
                                                                     ivf_refine=ivf_refine))
        build_s = time.perf_counter() - t
        nbytes = int(faiss.serialize_index(index.index).nbytes)
        faiss.omp_set_num_threads(1)
        settings: list[tuple[str, int | None]] = [("-", None)]
        if kind == "hnsw":
            settings = [("efSearch", e) for e in ef_search]
        elif kind in ("ivfpq", "ivfflat", "ivfsq"):
            settings = [("nprobe", p) for p in nprobe]
        row: dict[str, Any] = {"build_s": round(build_s, 2), "index_mb": round(nbytes / 2**20, 1), "settings": []}
        if kind == "hnsw":
            row.update(M=hnsw_m, efConstruction=ef_construction)
        elif kind == "ivfpq":
            row.update(refine_k_factor=ivf_refine)
        elif kind in ("ivfflat", "ivfsq"):
            row.update(nlist=int(faiss.extract_index_ivf(index.index).nlist))
        for name, value in settings:
            if kind == "hnsw":
                _set_hnsw_ef(index.index, value)
                index = type(index)(index.index, kind, IndexParams(hnsw_ef_search=value))
            elif kind == "ivfpq":
                faiss.extract_index_ivf(index.index).nprobe = value
                index = type(index)(index.index, kind, IndexParams(ivf_nprobe=value, ivf_refine=ivf_refine))
            elif kind == "ivfflat":  # the nprobe travels in the search parameters (retrieval/index.py)
                index = type(index)(index.index, kind, IndexParams(ivf_flat_nprobe=value))
            elif kind == "ivfsq":
                index = type(index)(index.index, kind, IndexParams(ivf_sq_nprobe=value))
            ids, lat = _latency(index, q, 100)
            ids_f, lat_f = _latency(index, q, 100, allowed=live)
            r = {"param": name, "value": value,
                 "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                 "recall@100_vs_exact": round(_recall(truth, ids), 4),
                 "filtered_p50_ms": round(float(np.percentile(lat_f, 50)), 3),
                 "filtered_p99_ms": round(float(np.percentile(lat_f, 99)), 3),
                 "filtered_recall@100_vs_exact": round(_recall(truth_live, ids_f), 4)}
            row["settings"].append(r)
            say(f"  {kind:6s} {name} {value}  build {row['build_s']}s  {row['index_mb']} MB  p50 {r['p50_ms']} ms  "
                f"p99 {r['p99_ms']} ms  recall@100 {r['recall@100_vs_exact']}  | filtered p50 {r['filtered_p50_ms']} "
                f"p99 {r['filtered_p99_ms']} recall {r['filtered_recall@100_vs_exact']}")
        out["kinds"][kind] = row
        del index
    faiss.omp_set_num_threads(threads)
    flat = out["kinds"].get("flat")
    for kind, row in out["kinds"].items():
        ok = [s for s in row["settings"] if s["recall@100_vs_exact"] >= target_recall]
        if not ok:
            row["chosen"] = None
            continue
        best = min(ok, key=lambda s: s["p50_ms"])
        row["chosen"] = dict(best)
        if flat is not None:
            base = flat["settings"][0]
            best_c = row["chosen"]
            best_c["speedup_p50_vs_exact"] = round(base["p50_ms"] / max(best["p50_ms"], 1e-6), 1)
            best_c["speedup_p99_vs_exact"] = round(base["p99_ms"] / max(best["p99_ms"], 1e-6), 1)
            best_c["filtered_speedup_p50_vs_exact"] = round(base["filtered_p50_ms"] / max(best["filtered_p50_ms"], 1e-6), 1)
        say(f"  chosen {kind}: {best['param']} {best['value']}  p50 {best['p50_ms']} ms  p99 {best['p99_ms']} ms  "
            f"recall@100 {best['recall@100_vs_exact']}  speed-up vs exact {row['chosen'].get('speedup_p50_vs_exact')}x")
    return out
