"""Point-in-time replay of test requests: retrieval scored the way serving scores it.

    reqs = replay_requests(ev, is_test, max_requests=3000, seed=0)
    out = run_replay(ReplayInputs(...), reqs)      # {"methods": {...}, "n_requests": ...}

The boundary protocol (``bench/retrieval.py``) scores every candidate once, at the split
boundary, with the train-side state. Serving does not: each request is scored at its own
time, with the user's clicks so far and live click/impression counters updated within
minutes. The replay does the same for a sample of test requests. For a request at time t:

- candidates = items live at t (published by t, younger than the learned age limit), minus
  what the user clicked before t;
- user vector from the user's last clicks strictly before t (train and test side);
- item counters (clicks, impressions, creator totals) of every event strictly before t
  (``retrieval/counters.CounterReplay``: never one at or after t);
- the oracle ranks by the true attractiveness at t (synthetic worlds);
- relevant = the items the user clicked in that request (MovieLens, which has no
  requests: the items rated at the same second); an item the user had clicked before t
  stays relevant but is not a candidate, for every method alike.

Items published a minute before a request are thereby seen as serving sees them: their
first minutes of clicks and impressions. No model is refitted during the replay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from feedrank.evaluation.metrics import ndcg_at_k_lists, recall_at_k
from feedrank.retrieval.counters import CounterReplay, creator_codes

KS = (10, 50, 100)
NEW_ITEM_S = 3600.0  # "new" relevant items: published less than an hour before the request


@dataclass(frozen=True)
class ReplayRequests:
    """Sampled test requests, in time order: ``users`` (R,) user codes, ``ts`` (R,) request
    times, ``relevant`` (R,) arrays of clicked item indices."""

    users: np.ndarray
    ts: np.ndarray
    relevant: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class ReplayInputs:
    """What the replay scores with: the dataset's ``events`` (``EventArrays``) and
    ``catalog``, ``encode_users(histories (R, L), ts (R,)) -> (R, D)`` user vectors of the
    trained towers with item vectors ``vecs`` (N, D), ``prior``
    (an ``AgePrior`` or None), ``max_age_s`` (None: no age limit), the ``cfg``'s pipeline
    settings, ``warm`` (N,) bool (item clicked before the boundary), ``boundary``, for
    synthetic worlds ``truth`` (a ``WorldTruth``); ``feedback`` every click with its
    clicker's vector (``FeedbackEvents``; needed when ``prior`` has the feedback term), and
    ``prior_without_feedback``, served too for comparison (``..._served_without_feedback``);
    ``cf``: CF baselines by name (``bench/retrieval_cf.py``: ``AlsModel`` scored with the
    user's clicks before t folded in, ``KnnModel``; a user without clicks gets popularity)."""

    events: Any
    catalog: Any
    encode_users: Callable[[np.ndarray, np.ndarray], np.ndarray]
    vecs: np.ndarray
    prior: Any
    max_age_s: float | None
    cfg: Any
    warm: np.ndarray
    boundary: float
    truth: Any = None
    feedback: Any = None
    prior_without_feedback: Any = None
    cf: dict[str, Any] | None = None


def replay_requests(ev, is_test: np.ndarray, max_requests: int, seed: int) -> ReplayRequests:
    """Test requests with at least one click: grouped by request id where clicks have one
    (time = the request's first event, i.e. when the feed was served), else by (user,
    second) of the click. At most ``max_requests``, a uniform sample (seeded)."""
    clk = is_test & ev.mask("click")
    if not clk.any():
        return ReplayRequests(np.zeros(0, np.int64), np.zeros(0), [])
    with_req = clk & (ev.request_codes >= 0)
    if with_req.any():
        rows = np.flatnonzero(with_req)
        codes = ev.request_codes[rows]
        n_req = int(ev.request_codes.max()) + 1
        start = np.full(n_req, np.inf)
        has = ev.request_codes >= 0
        np.minimum.at(start, ev.request_codes[has], ev.ts[has])
        keys, inv = np.unique(codes, return_inverse=True)
        users = np.zeros(len(keys), dtype=np.int64)
        users[inv] = ev.user_codes[rows]
        ts = start[keys]
    else:
        rows = np.flatnonzero(clk)
        pair = np.stack([ev.user_codes[rows], np.floor(ev.ts[rows]).astype(np.int64)], axis=1)
        keys, inv = np.unique(pair, axis=0, return_inverse=True)
        inv = inv.ravel()
        users, ts = keys[:, 0].astype(np.int64), keys[:, 1].astype(np.float64)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(keys) + 1))
    items = ev.item_idx[rows][order]
    pick = np.arange(len(keys))
    if len(pick) > max_requests:
        pick = np.sort(np.random.default_rng(seed).choice(pick, size=max_requests, replace=False))
    pick = pick[np.argsort(ts[pick], kind="stable")]
    return ReplayRequests(users[pick], ts[pick], [np.unique(items[bounds[j]:bounds[j + 1]]) for j in pick])


def _top(scores: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best of candidates ``cand`` by ``scores`` (same length), ties by index."""
    if len(cand) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        cand, scores = cand[part], scores[part]
    return cand[np.lexsort((cand, -scores))]


def run_replay(inp: ReplayInputs, reqs: ReplayRequests, k: int = 100) -> dict[str, Any]:
    """Replay ``reqs``; per method recall@10/50/100, nDCG@10 and recall@100 on cold (no
    train click), warm and new (published < 1 h before the request) relevant items."""
    from feedrank.retrieval.item_feedback import FeedbackReplay
    from feedrank.retrieval.served import popular_pool_size, prior_pool, served_top

    ev, catalog, vecs, prior = inp.events, inp.catalog, inp.vecs, inp.prior
    n = len(catalog.item_ids)
    p = inp.cfg.pipeline
    log = ev.click_log()
    hist = log.histories(reqs.users, reqs.ts, inp.cfg.retrieval.history_len)
    uvec = np.asarray(inp.encode_users(hist, reqs.ts), dtype=np.float32)
    cats = getattr(catalog, "cat_idx", None)  # the category term's inputs (only read when the prior has one)
    aff = prior.user_affinity(hist, cats) if prior is not None and prior.category_weight else np.full(len(reqs), None)
    ends = log.positions_before(reqs.users, reqs.ts)
    imp = ev.mask("impression")
    clk = ev.mask("click")
    replay = CounterReplay(n, ev.item_idx[clk], ev.ts[clk], ev.item_idx[imp], ev.ts[imp], creator_codes(catalog.creators))
    fb_strength = 0.0 if prior is None else prior.feedback_strength
    if fb_strength and inp.feedback is None:
        raise ValueError("run_replay: the prior has a feedback term but ReplayInputs.feedback is None")
    fb_replay = FeedbackReplay(n, inp.feedback) if fb_strength else None
    base = inp.prior_without_feedback
    # the prior without feedback has its own fitted category estimator: its own users' shares
    aff_base = (base.user_affinity(hist, cats) if base is not None and base.category_weight
                else np.full(len(reqs), None))
    pub = np.nan_to_num(catalog.published_at, nan=-np.inf)
    hours = max(p.fresh_hours, p.followed_hours) * 3600.0
    pop_n = 0 if prior is None else popular_pool_size(prior, p.ann_k)
    o_items = None
    if inp.truth is not None:
        o_items = inp.truth.item_index(catalog.item_ids.astype(str))
        o_users = inp.truth.user_index(ev.user_ids[reqs.users].astype(str))
    names = ["two_tower", "two_tower_prior", "two_tower_prior_served", "popularity"] + (["oracle"] if o_items is not None else [])
    if prior is None:
        names = [m for m in names if not m.startswith("two_tower_prior")]
    if prior is not None and prior.cold_user is not None:
        names.insert(2, "two_tower_prior_one_weight_set")  # without the weights for users without history
    if prior is not None and base is not None:
        names.insert(names.index("two_tower_prior_served") + 1, "two_tower_prior_served_without_feedback")
    cf_models = inp.cf or {}
    names += list(cf_models)
    lists: dict[str, list[list[int]]] = {m: [] for m in names}
    for j in range(len(reqs)):
        t = float(reqs.ts[j])
        replay.advance(t)
        counters = replay.snapshot()
        plain = counters
        if fb_replay is not None:  # the clicker vectors of every click strictly before t
            fb_replay.advance(t)
            counters = replace(counters, feedback=fb_replay.means(fb_strength))
        live = pub <= t
        if inp.max_age_s is not None:
            live &= t - pub < inp.max_age_s
        u = int(reqs.users[j])
        live[log.items[log.starts[u]:ends[j]]] = False
        has_history = bool(ends[j] > log.starts[u])
        cand = np.flatnonzero(live)
        tower = vecs[cand] @ uvec[j]
        lists["two_tower"].append(_top(tower, cand, k).tolist())
        lists["popularity"].append(_top(counters.clicks[cand], cand, k).tolist())
        if prior is not None:
            ct, pub_c = counters.take(cand), catalog.published_at[cand]
            exact = prior.for_user(has_history).scores(uvec[j][None], vecs[cand], pub_c, t, counters=ct,
                                                       affinity=aff[j], categories=None if cats is None else cats[cand])[0]
            lists["two_tower_prior"].append(_top(exact, cand, k).tolist())
            if "two_tower_prior_one_weight_set" in lists:
                one = prior.scores(uvec[j][None], vecs[cand], pub_c, t, counters=ct, affinity=aff[j],
                                   categories=None if cats is None else cats[cand])[0]
                lists["two_tower_prior_one_weight_set"].append(_top(one, cand, k).tolist())
            ann = _top(tower, cand, p.ann_oversample * p.ann_k)
            pool = prior_pool(catalog.published_at, live, t, hours / 3600.0, counters.clicks, pop_n)
            lists["two_tower_prior_served"].append(
                served_top(prior, uvec[j], ann, pool, vecs, catalog.published_at, t, k, counters,
                           has_history=has_history, affinity=aff[j], categories=cats).tolist())
            if base is not None:
                pool_b = prior_pool(catalog.published_at, live, t, hours / 3600.0, plain.clicks,
                                    popular_pool_size(base, p.ann_k))
                lists["two_tower_prior_served_without_feedback"].append(
                    served_top(base, uvec[j], ann, pool_b, vecs, catalog.published_at, t, k, plain,
                               has_history=has_history, affinity=aff_base[j],
                               categories=cats).tolist())
        if cf_models:
            before = log.items[log.starts[u]:ends[j]]
            for name, model in cf_models.items():
                s = counters.clicks[cand] if not len(before) else \
                    (model.item_factors[cand] @ model.fold_in(before) if hasattr(model, "fold_in") else model.scores(before)[cand])
                lists[name].append(_top(s, cand, k).tolist())
        if o_items is not None:
            a = inp.truth.world.attractiveness(np.full(len(cand), o_users[j]), o_items[cand], np.full(len(cand), t))
            lists["oracle"].append(_top(a, cand, k).tolist())
    relevant = [set(r.tolist()) for r in reqs.relevant]
    cold = [{i for i in r if not inp.warm[i]} for r in relevant]
    warm = [{i for i in r if inp.warm[i]} for r in relevant]
    new = [{i for i in r if 0 <= reqs.ts[j] - pub[i] < NEW_ITEM_S} for j, r in enumerate(relevant)]
    out: dict[str, Any] = {"protocol": "replay", "n_requests": len(reqs),
                           "relevant_per_request": round(float(np.mean([len(r) for r in relevant])), 3) if relevant else None,
                           "cold_share_of_relevant": _share(cold, relevant), "new_share_of_relevant": _share(new, relevant),
                           "methods": {}}
    for m, ls in lists.items():
        row = {f"recall@{c}": _r(recall_at_k(ls, relevant, c)) for c in KS}
        row["ndcg@10"] = _r(ndcg_at_k_lists(ls, relevant, 10))
        for tag, rel in (("cold", cold), ("warm", warm), ("new1h", new)):
            row[f"recall@100_{tag}"] = _r(recall_at_k(ls, rel, 100))
        out["methods"][m] = row
    if "oracle" in out["methods"] and out["methods"]["oracle"]["recall@100"]:
        o = out["methods"]["oracle"]["recall@100"]
        for m in names:
            if m != "oracle":
                out[f"{m}_recall@100_vs_oracle"] = round(out["methods"][m]["recall@100"] / o, 4)
    return out


def _r(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def _share(part: list[set[int]], whole: list[set[int]]) -> float | None:
    total = sum(len(r) for r in whole)
    return round(sum(len(r) for r in part) / total, 4) if total else None
