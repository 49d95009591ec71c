"""Freshness and popularity priors for retrieval scores, fitted after the towers are trained.

The towers have no item-age input (item vectors live in a static index; an age input would
go stale), and the logQ correction of training takes item popularity out of ``u . v``. The
prior adds both back as separate terms of the retrieval logit:

    score(u, i, t) = u . v_i / T  -  w_age * age_days(i, t)  +  w_pop * log1p(clicks_i(t))

i.e. the tower's softmax logit times an exponential decay ``exp(-w_age * age_days)`` of
the click probability (the shape of news attention) and a power ``(1 + clicks)^w_pop`` of
the item's click count so far. The two weights (both >= 0) are fitted by maximum
likelihood of the full softmax over the items live at each click, on a sample of training
clicks, towers fixed, with point-in-time click counts (``fit_prior_weights``: projected
Newton on a convex problem). No test data is used; zero weights recover the plain tower.

At serving (``rescore_with_prior``, called by ``Recommender._retrieve``) the ANN returns its
top ``pipeline.ann_oversample * ann_k`` by ``u . v``; those plus every recent live item
(the newest ``PRIOR_POOL_MAX`` (5,000), published within the recent pool's hours) and the popular
list are rescored exactly and the best ``ann_k`` kept. An item in none of these sets is
older than the pool, less clicked than the popular list and below the ANN's cut, so it
cannot beat the kept ones by much; the bench measures this served variant next to exact
scoring (``two_tower_prior_served``). The index itself is unchanged. Pure numpy.

Optional further terms (fitted only when ``PriorFitData`` asks for them; 0 otherwise):
``w_trend * log1p(decayed clicks)``, ``w_ctr`` / ``w_creator`` times the log of the item's /
creator's Bayesian-smoothed CTR over the global one, read from ``ItemCounters``
(``retrieval/counters.py``); terms for items new to the towers (``NewItemTerms``,
``retrieval/prior_terms.py``: own intercept, age, popularity and tower weights of any
sign). None of them helped on the benchmarks (docs/retrieval.md). Two more are fitted by
``feedrank train`` and kept when they rank held-out training clicks better (``prefer``):
separate weights for users without history (``cold_user``, incl. the tower logit's weight,
fitted on each user's first visit) and the popularity curve ``w_pop2 * log1p(clicks)**2``.

The category term ``w_cat * log(a_u[cat_i])`` (``a_u``: the user's category preference from
the history, ``AgePrior.user_affinity``: a recency-weighted smoothed share, ``CategoryShare``,
fitted with the weights; in older bundles the towers' own input ``category_affinity``;
serving passes ``AgePrior.category_share`` as ``affinity`` with the candidates' ``categories``) did: ``feedrank train`` fits age,
popularity and category, plus the tower logit's weight (``fit_tower_weight``) when it fits
on a held-out tail with towers that have not seen it (``pipeline/build.py``,
``retrieval.prior_fit``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from feedrank.features.history import population_shares
from feedrank.retrieval.counters import CounterReplay, ItemCounters, counters_at, creator_codes
from feedrank.retrieval.item_feedback import FEEDBACK_STRENGTHS, FeedbackEvents, feedback_feature
from feedrank.retrieval.prior_terms import (CategoryShare, NewItemTerms, category_share_fields, fit_prior_weights,
                                           search_category_share)

DAY_S = 86400.0
CATEGORY_ESTIMATORS = ("uniform", "fitted")  # how the category term's share is estimated (fit_age_prior)
CATEGORY_SEARCH_CLICKS = 500  # at most this many of the fit's clicks pick the fitted estimator (its cost)
ITEM_CTR_STRENGTH = 20.0      # an item's CTR counts as much as the global one after 20 impressions
CREATOR_CTR_STRENGTH = 200.0  # a creator's, after 200


@dataclass(frozen=True)
class AgePrior:
    weight: float          # w_age, per day of age, in units of the logit u.v/T
    temperature: float     # T of the towers
    ref_ts: float          # newest publish time of the training catalogue (for reference)
    pop_weight: float = 0.0  # w_pop, per unit of log1p(clicks)
    n_clicks: int = 0      # clicks the fit used
    nll_before: float = float("nan")
    nll_after: float = float("nan")
    ctr_weight: float = 0.0      # w_ctr, per unit of the item's log smoothed-CTR ratio
    creator_weight: float = 0.0  # w_creator, per unit of the creator's log smoothed-CTR ratio
    ctr0: float = 0.0            # global train CTR (clicks / impressions), the shrinkage target
    ctr_strength: float = ITEM_CTR_STRENGTH        # pseudo-impressions of the item CTR's prior
    creator_strength: float = CREATOR_CTR_STRENGTH  # pseudo-impressions of the creator CTR's prior
    trend_weight: float = 0.0    # w_trend, per unit of log1p(clicks decayed over RECENT_TAU_S)
    cold_user: AgePrior | None = None  # the weights for a user with no history (None: the same)
    tower_weight: float = 1.0    # multiplies u.v/T (fitted for users without history, whose u is context only)
    feedback_weight: float = 0.0    # w_fb, per unit of u . (shrunk mean clicker vector of the item)
    feedback_strength: float = 0.0  # s of that mean: sum / (clicks + s); 0 = the term is off
    new: NewItemTerms | None = None  # extra terms for items published after the towers' training (None: off)
    category_weight: float = 0.0  # w_cat, per unit of log(the user's smoothed history share of the item's category)
    n_categories: int = 0         # C of that share (the towers' category vocabulary; 0: no category term)
    category_estimator: CategoryShare | None = None  # how that share is estimated (None: category_affinity's)
    category_search: dict | None = None  # how the estimator was picked (CategoryShareFit.to_json(); None: not fitted)
    pop2_weight: float = 0.0  # w_pop2, per unit of log1p(clicks)**2 (the popularity curve's bend; 0: a power law)
    selection: dict | None = None  # the held-out comparisons that chose the curve / the cold-user weights (fit_age_prior)

    def to_json(self) -> dict:
        return {"weight": self.weight, "pop_weight": self.pop_weight, "pop2_weight": self.pop2_weight,
                "selection": self.selection,
                "temperature": self.temperature,
                "ref_ts": self.ref_ts, "n_clicks": self.n_clicks, "nll_before": self.nll_before,
                "nll_after": self.nll_after, "ctr_weight": self.ctr_weight, "creator_weight": self.creator_weight,
                "ctr0": self.ctr0, "ctr_strength": self.ctr_strength, "creator_strength": self.creator_strength,
                "trend_weight": self.trend_weight,
                "cold_user": None if self.cold_user is None else self.cold_user.to_json(),
                "tower_weight": self.tower_weight, "feedback_weight": self.feedback_weight,
                "feedback_strength": self.feedback_strength,
                "new_items": None if self.new is None else self.new.to_json(),
                "category_weight": self.category_weight, "n_categories": self.n_categories,
                "category_share": None if self.category_estimator is None else {
                    **self.category_estimator.to_json(), "search": self.category_search}}

    @classmethod
    def from_json(cls, raw: dict) -> AgePrior:
        """The prior a bundle's manifest records; a category estimator whose population does not
        have the prior's ``n_categories`` entries is refused here (at load, not per request)."""
        prior = cls._from_json(raw)
        est, n = prior.category_estimator, prior.n_categories
        if est is not None and est.population is not None and n and len(est.population) != n:
            raise ValueError(f"age_prior.category_share.population has {len(est.population)} categories, "
                             f"the prior has n_categories {n}")
        return prior

    @classmethod
    def _from_json(cls, raw: dict) -> AgePrior:
        return cls(float(raw["weight"]), float(raw["temperature"]), float(raw.get("ref_ts", 0.0)),
                   float(raw.get("pop_weight", 0.0)), int(raw.get("n_clicks", 0)),
                   pop2_weight=float(raw.get("pop2_weight", 0.0)), selection=raw.get("selection"),
                   ctr_weight=float(raw.get("ctr_weight", 0.0)), creator_weight=float(raw.get("creator_weight", 0.0)),
                   ctr0=float(raw.get("ctr0", 0.0)), ctr_strength=float(raw.get("ctr_strength", ITEM_CTR_STRENGTH)),
                   creator_strength=float(raw.get("creator_strength", CREATOR_CTR_STRENGTH)),
                   trend_weight=float(raw.get("trend_weight", 0.0)),
                   cold_user=cls.from_json(raw["cold_user"]) if raw.get("cold_user") else None,
                   tower_weight=float(raw.get("tower_weight", 1.0)),
                   feedback_weight=float(raw.get("feedback_weight", 0.0)),
                   feedback_strength=float(raw.get("feedback_strength", 0.0)),
                   new=NewItemTerms.from_json(raw["new_items"]) if raw.get("new_items") else None,
                   category_weight=float(raw.get("category_weight", 0.0)), n_categories=int(raw.get("n_categories", 0)),
                   **category_share_fields(raw.get("category_share")))

    @property
    def uses_clicks(self) -> bool:
        """True when a popularity term reads the items' click counts."""
        return self.pop_weight > 0.0 or self.pop2_weight > 0.0

    @property
    def active(self) -> bool:
        own = any(w > 0.0 for w in (self.weight, self.pop_weight, self.pop2_weight, self.ctr_weight, self.creator_weight,
                                    self.trend_weight, self.feedback_weight, self.category_weight)) or (self.new is not None and self.new.active)
        return own or (self.cold_user is not None and self.cold_user.active)

    def for_user(self, has_history: bool) -> AgePrior:
        """The weights to score a user with (``cold_user`` for one without history)."""
        return self if has_history or self.cold_user is None else self.cold_user

    def bias(self, published_at: np.ndarray, clicks: np.ndarray | None, now: float,
             counters: ItemCounters | None = None) -> np.ndarray:
        """(N,) the prior's additive term at ``now`` (unknown publish time = no age term; a
        not-yet-published item counts as age 0). ``counters`` (the same N items) adds the
        smoothed-CTR terms when it has impressions; without them those terms are 0."""
        age = np.maximum(now - published_at, 0.0) / DAY_S
        if not np.isfinite(age).all():  # unknown publish times: np.nan_to_num only then (its cost is per call)
            age = np.nan_to_num(age, nan=0.0)
        out = -self.weight * age
        if clicks is None and counters is not None:
            clicks = counters.clicks
        log_clicks = None if clicks is None else np.log1p(np.maximum(clicks, 0.0))
        if log_clicks is not None and self.pop_weight:
            out = out + self.pop_weight * log_clicks
        if log_clicks is not None and self.pop2_weight:
            out = out + self.pop2_weight * (log_clicks * log_clicks)
        if self.new is not None:
            out = out + self.new.bias(published_at, age, log_clicks)
        if counters is not None and self.trend_weight and counters.recent_clicks is not None:
            out = out + self.trend_weight * np.log1p(np.maximum(counters.recent_clicks, 0.0))
        if counters is not None and self.ctr0 > 0:
            if self.ctr_weight and counters.impressions is not None:
                out = out + self.ctr_weight * smoothed_ctr_ratio(counters.clicks, counters.impressions, self.ctr0,
                                                                 self.ctr_strength)
            if self.creator_weight and counters.creator_impressions is not None:
                out = out + self.creator_weight * smoothed_ctr_ratio(counters.creator_clicks, counters.creator_impressions,
                                                                     self.ctr0, self.creator_strength)
        return out

    def tower_weights(self, published_at: np.ndarray) -> np.ndarray:
        """(N,) the weight of each item's tower logit u.v/T: ``tower_weight``, plus
        ``new.tower_weight`` for items new to the towers."""
        out = np.full(len(published_at), self.tower_weight)
        if self.new is not None and self.new.tower_weight:
            out = out + self.new.tower_weight * self.new.is_new(published_at)
        return out

    def _category_count(self, item_cat: np.ndarray) -> int:
        """C of the category shares: the prior's ``n_categories``, else (unset) the catalogue's codes."""
        return self.n_categories if self.n_categories > 0 else int(np.max(item_cat, initial=0)) + 1

    def user_affinity(self, histories: np.ndarray, item_cat: np.ndarray) -> np.ndarray:
        """(U, C) the users' category preferences from ``histories`` (U, L) item rows (-1
        padding, most recent last), the category term's ``affinity``: ``category_estimator``'s
        recency-weighted, population-smoothed share, or without one (older bundles) the
        towers' own user input ``category_affinity``. O(U * L) when ``n_categories`` is set."""
        from feedrank.features.history import category_affinity

        n = self._category_count(item_cat)
        if self.category_estimator is None:
            return category_affinity(histories, item_cat, n)
        return self.category_estimator.shares(histories, item_cat, n)

    def category_share(self, history: np.ndarray, item_cat: np.ndarray,
                       towers: np.ndarray | None = None) -> np.ndarray | None:
        """(C,) one user's ``affinity`` for ``scores`` / ``rescore_with_prior`` from its history
        (L,) item rows (-1 padding, most recent last; serving's ``UserContext.history``),
        ``user_affinity``'s row through the one-history path (``CategoryShare.one``); None
        when the prior has no category term (nothing reads it then). Without an estimator
        (older bundles) it is the towers' ``category_affinity``: ``towers``, that share as the
        user tower already computed it for this history, when given."""
        if not self.category_weight:
            return None
        if self.category_estimator is None:
            if towers is not None:
                return towers
            return self.user_affinity(np.asarray(history, dtype=np.int64).reshape(1, -1), item_cat)[0]
        n = self._category_count(item_cat)
        return self.category_estimator.one(history, item_cat, n)

    def scores(self, user_vecs: np.ndarray, item_vecs: np.ndarray, published_at: np.ndarray, now: float,
               clicks: np.ndarray | None = None, counters: ItemCounters | None = None,
               affinity: np.ndarray | None = None, categories: np.ndarray | None = None) -> np.ndarray:
        """(U, N) retrieval logits u.v/T + prior at ``now``; ``clicks`` (N,) click counts so far
        (or ``counters``, which also carries impressions and, for the feedback term, the
        items' mean clicker vectors); ``affinity`` (U, C) the users' category shares
        (``user_affinity``) and ``categories`` (N,) the items' category codes: needed when
        ``category_weight`` is set."""
        out = self.tower_weights(published_at)[None, :] * (user_vecs @ item_vecs.T / self.temperature) + \
            self.bias(published_at, clicks, now, counters)[None, :]
        if self.feedback_weight and counters is not None and counters.feedback is not None:
            out = out + self.feedback_weight * (user_vecs @ counters.feedback.T)
        if self.category_weight:
            if affinity is None or categories is None:
                raise ValueError("AgePrior.scores: the prior has a category term (category_weight "
                                 f"{self.category_weight:g}) but no user affinity / item categories were passed")
            aff = np.asarray(affinity, dtype=np.float64).reshape(len(out), -1)
            cats = np.asarray(categories, dtype=np.int64)
            if self.n_categories and aff.shape[1] != self.n_categories:
                raise ValueError(f"AgePrior.scores: affinity has {aff.shape[1]} categories, the prior was fitted "
                                 f"with {self.n_categories}")
            if len(cats) and (cats.min() < 0 or cats.max() >= aff.shape[1]):
                raise ValueError(f"AgePrior.scores: item category codes must be in 0..{aff.shape[1] - 1}")
            if not (aff > 0).all():  # smoothed shares are > 0; a raw share of 0 would give -inf and drop items
                raise ValueError("AgePrior.scores: category shares must be > 0 (smoothed, as user_affinity gives them)")
            out = out + self.category_weight * np.log(aff[:, cats])
        return out


def smoothed_ctr_ratio(clicks: np.ndarray, impressions: np.ndarray, ctr0: float, strength: float) -> np.ndarray:
    """log of the Bayesian-smoothed CTR over the global one: ``log((c + s ctr0) / (n + s) / ctr0)``,
    0 with no impressions, positive for items clicked more often than average per view."""
    c = np.maximum(np.asarray(clicks, dtype=np.float64), 0.0)
    n = np.maximum(np.asarray(impressions, dtype=np.float64), c)  # clicks without a logged impression count as seen
    return np.log((c + strength * ctr0) / (n + strength) / ctr0)


def _age_feature(ts: np.ndarray, published_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-age_days (Q, N) float32, published-by-then (Q, N) bool); unknown publish time: age 0, live."""
    known = np.isfinite(published_at)
    age = ((ts[:, None] - np.where(known, published_at, 0.0)[None, :]) / DAY_S).astype(np.float32)
    age = np.where(known[None, :], age, np.float32(0.0))
    return -np.maximum(age, 0.0), age >= 0


def fit_age_weight(user_vecs: np.ndarray, item_vecs: np.ndarray, positives: np.ndarray, ts: np.ndarray,
                   published_at: np.ndarray, temperature: float, max_age_s: float | None = None,
                   max_items: int = 5000, rng: np.random.Generator | None = None,
                   click_counts: np.ndarray | None = None,
                   more_feats: list[np.ndarray] | None = None,
                   live_until: float | None = None, fit_scale: bool = False,
                   new_from: float | None = None) -> tuple[np.ndarray, float, float]:
    """Fit the prior weights on clicks: user_vecs (Q, D) at click times ``ts`` (Q,), item_vecs
    (N, D), positives (Q,) clicked rows, published_at (N,) (NaN = unknown), optional
    ``click_counts`` (Q, N) point-in-time click counts (adds the popularity term) and
    ``more_feats`` further (Q, N) features (each gets a weight >= 0, in order). An item
    is a candidate at ``ts`` when published by then (and within ``max_age_s``). Catalogues
    above ``max_items`` are represented by a uniform sample of that many items plus each
    click's positive. ``live_until``: candidates are the items published by then instead
    (ages at ``ts`` clamped at 0; the boundary protocol's view). Returns (w: [w_age, (w_pop),
    *more], nll at 0, nll at w). ``fit_scale``: the tower logit gets a fitted weight too,
    returned last (else it is fixed at 1). ``new_from``: items published at or after it are
    new to the towers and get the ``NewItemTerms`` weights of any sign (intercept, age,
    (popularity), (tower logit, with ``fit_scale``)), returned before the tower weight."""
    more_feats = list(more_feats or [])
    if len(item_vecs) > max_items:
        rng = rng or np.random.default_rng(0)
        keep = np.union1d(rng.choice(len(item_vecs), size=max_items, replace=False), positives)
        positives = np.searchsorted(keep, positives)
        item_vecs, published_at = item_vecs[keep], published_at[keep]
        click_counts = None if click_counts is None else click_counts[:, keep]
        more_feats = [f[:, keep] for f in more_feats]
    base = (user_vecs @ item_vecs.T / temperature).astype(np.float32)
    neg_age, live = _age_feature(ts, published_at)
    if max_age_s is not None:
        live &= neg_age >= -max_age_s / DAY_S
    if live_until is not None:
        pub_ok = np.nan_to_num(published_at, nan=-np.inf) <= live_until
        live = np.broadcast_to(pub_ok[None, :], live.shape).copy()
        if max_age_s is not None:
            live &= neg_age >= -max_age_s / DAY_S
    feats = [neg_age]
    if click_counts is not None:
        feats.append(np.log1p(click_counts).astype(np.float32))
    feats.extend(np.asarray(f, dtype=np.float32) for f in more_feats)
    lower = [0.0] * len(feats)
    if new_from is not None:
        new = (np.nan_to_num(published_at, nan=-np.inf) >= new_from).astype(np.float32)[None, :]
        extra = [np.broadcast_to(new, base.shape), new * neg_age] + \
            ([new * feats[1]] if click_counts is not None else []) + ([new * base] if fit_scale else [])
        feats, lower = feats + extra, lower + [-np.inf] * len(extra)
    if fit_scale:
        return fit_prior_weights(np.zeros_like(base), feats + [base], live, positives, lower=np.array(lower + [0.0]))
    return fit_prior_weights(base, feats, live, positives, lower=np.array(lower))


def point_in_time_counts(click_items: np.ndarray, click_ts: np.ndarray, ts: np.ndarray, n_items: int) -> np.ndarray:
    """(Q, N) float32: per query time ``ts[q]``, each item's clicks strictly before it
    (``counters_at``'s click counts)."""
    return counters_at(CounterReplay(n_items, click_items, click_ts), ts)["clicks"]


@dataclass(frozen=True)
class PriorFitData:
    """What the prior fit may use beyond the training clicks: training ``impressions``
    (item indices, times) for the smoothed-CTR terms (None: no such terms), ``fit_from``
    (fit on the training clicks at or after this time, a validation tail; None: the newest
    half), ``trend`` (add the decayed-click term), ``frozen`` (score every fit click with the
    history, counters and age as of ``fit_from``, as the boundary protocol scores the test
    side; needs ``fit_from``), and ``model`` / ``item_vecs`` of towers trained without that tail (None: the
    served towers; they have seen the clicks the fit scores, which biases the weights
    towards 0 where the towers memorise them); ``feedback``: training clicks with their
    clickers' user vectors (``retrieval/item_feedback.py``), which adds the feedback term
    ``w_fb u . m_i`` (its shrinkage ``s`` picked from ``FEEDBACK_STRENGTHS`` by likelihood)."""

    impressions: tuple[np.ndarray, np.ndarray] | None = None
    fit_from: float | None = None
    model: object | None = None
    item_vecs: np.ndarray | None = None
    trend: bool = False
    frozen: bool = False
    feedback: FeedbackEvents | None = None


MIN_COLD_USER_CLICKS = 100  # fewer first clicks than this: no separate weights for users without history
MIN_HELD_OUT_CLICKS = 500    # the curve's held-out comparison: fewer unfitted tail clicks than this, a quarter of the tail
MIN_SELECTION_CLICKS = 50    # fewer held-out clicks than this: no selection, the simpler prior is served


def fit_age_prior(model, catalog, clicks, temperature: float, history_len: int, item_vecs: np.ndarray,
                  max_age_s: float | None, seed: int, n_clicks: int = 2000, popularity: bool = True,
                  max_items: int = 5000, data: PriorFitData | None = None, ctr: bool = True,
                  cold_users: bool = False, fit_tower_weight: bool = False, new_items: bool = False,
                  category: bool = False, category_estimator: str = "uniform", cold_window_s: float = 0.0,
                  pop_curve: bool | str = False, select_cold: bool = False) -> AgePrior:
    """Fit the prior on a sample of training ``clicks`` (a ``ClickLog``; the newest half, or
    those after ``data.fit_from``), towers fixed: user vectors from each click's history
    before it, click (and, with ``data.impressions``, impression and creator) counts of every
    item before it. Above ``max_items`` items, a uniform sample of them (plus the clicked
    ones) stands for the catalogue: memory (n_clicks, max_items) per feature.

    ``fit_tower_weight``: the tower logit's weight (``tower_weight``, else 1) is fitted with
    the others; meant for a fit on clicks the scoring towers have not seen (``data.model``),
    where their confidence is what the served towers' is on new traffic.

    With ``cold_users``, a second set of weights (``AgePrior.cold_user``) is fitted on the
    clicks made with an empty history (each user's first clicks): a user the towers know
    nothing about gets a context-only vector, whose weight (``tower_weight``) is fitted too
    (used by ``rescore_with_prior(..., has_history=False)``).

    ``new_items`` (needs ``data.model``, towers trained before ``data.fit_from``): the
    ``NewItemTerms`` are fitted too, items published in the tail being new to those towers;
    the prior serves them with ``new_from`` just after the newest of ``clicks`` (what the
    served towers were trained on). ``category``: the category term ``w_cat * log(share of
    the item's category in the user's history)`` (``AgePrior.user_affinity``) is fitted too;
    ``category_estimator`` says how that share is estimated: ``uniform`` (the towers' own
    ``category_affinity``: every click weighs 1, uniform smoothing of strength 1) or ``fitted``
    (``CategoryShare``: a per-click recency decay, the smoothing strength and a uniform or
    population prior, picked by this fit's own likelihood on at most ``CATEGORY_SEARCH_CLICKS``
    of its clicks, ``search_category_share``; the population shares of that search come from
    the clicks before every fitted click, the served ones from all of ``clicks``).

    ``cold_window_s`` > 0: the weights for users without history are fitted on every click
    within that many seconds of the user's first click instead, each scored with an empty
    history (the feed of a user the store knows nothing about serves that user's first
    visit). ``pop_curve``: the popularity term gets the bend ``w_pop2 * log1p(clicks)**2``;
    ``"auto"``: fitted both ways, kept when it ranks held-out clicks of the same tail (up to
    ``n_clicks``, none of the fitted ones) better by more than one standard error (``prefer``:
    hits at 10 plus hits at 100 per click, ``click_hits``).
    ``select_cold``: the weights for users without history are kept only when they rank the
    first-visit clicks of the tail's new users (held out from a trial fit) better than the main
    weights do with an empty history, by the same rule; kept, they are refitted on every
    first-visit click (as without the selection). What was compared is in ``AgePrior.selection``."""
    if pop_curve not in (False, True, "auto"):
        raise ValueError(f"fit_age_prior: pop_curve {pop_curve!r}: expected False, True or 'auto'")
    if category_estimator not in CATEGORY_ESTIMATORS:
        raise ValueError(f"fit_age_prior: category_estimator {category_estimator!r}: expected one of "
                         f"{', '.join(CATEGORY_ESTIMATORS)}")
    data = data or PriorFitData()
    if new_items and (data.model is None or data.fit_from is None):
        raise ValueError("fit_age_prior(new_items=True) needs towers trained before the fitted tail "
                         "(PriorFitData.model and fit_from): in sample, no fitted click is on an item new to the towers")
    rng = np.random.default_rng(seed)
    order = np.argsort(clicks.ts, kind="stable")
    newest = order[len(order) // 2 :] if data.fit_from is None else order[clicks.ts[order] >= data.fit_from]
    first = (clicks.ts <= clicks.ts[clicks.starts[clicks.user_codes]] + cold_window_s if len(clicks.items)
             else np.zeros(0, bool))
    if data.frozen and data.fit_from is not None:  # "no history" = no click before the freeze
        first = clicks.ts[clicks.starts[clicks.user_codes]] >= data.fit_from
        if cold_users:
            newest = newest[~first[newest]]
    if not len(newest):
        raise ValueError(f"fit_age_prior: no training clicks to fit on (fit_from={data.fit_from})")
    val_rng = np.random.default_rng([seed, 1])  # the held-out clicks of the selections: the fits' draws stay as they were
    tail = newest  # every click the main weights may be fitted on
    select_curve = pop_curve == "auto" and popularity
    rng0 = copy.deepcopy(rng)
    val = np.zeros(0, dtype=np.int64)
    carved = select_curve and len(newest) < n_clicks + MIN_HELD_OUT_CLICKS
    if carved:  # too few to leave some unfitted: a quarter of the tail is held out, the kept fit redone on all of it
        val = np.sort(val_rng.choice(newest, size=len(newest) // 4, replace=False))
        newest = np.setdiff1d(newest, val)
    pick = np.sort(rng.choice(newest, size=min(n_clicks, len(newest)), replace=False))
    curve_rng = copy.deepcopy(rng)  # the curve's fit sees the same catalogue sample

    def fit(rows: np.ndarray, r: np.random.Generator, curve: bool, **k) -> AgePrior:
        k = {"category": category, "category_estimator": category_estimator, **k}
        return _fit_on_clicks(rows, model, catalog, clicks, temperature, history_len, item_vecs, max_age_s, r, popularity,
                              max_items, data, ctr, pop_curve=curve, **k)

    main_k = {"fit_scale": fit_tower_weight, "new_items": new_items}
    prior = fit(pick, rng, pop_curve is True, **main_k)
    selection: dict = {}
    score_model = model if data.model is None else data.model
    score_vecs = item_vecs if data.item_vecs is None else data.item_vecs
    hits = lambda pr, rows, **k: click_hits(pr, score_model, score_vecs, catalog, clicks, rows, history_len,  # noqa: E731
                                            max_age_s, seed=seed, **k)
    if select_curve:
        if not carved:
            val = np.setdiff1d(newest, pick)
            val = np.sort(val_rng.choice(val, size=min(n_clicks, len(val)), replace=False))
        if len(val) >= MIN_SELECTION_CLICKS:
            bent = fit(pick, curve_rng, True, **main_k)
            keep, selection["popularity_curve"] = _judge(("without", hits(prior, val)), ("with", hits(bent, val)))
        else:
            keep, selection["popularity_curve"] = _skipped(val, f"fewer than {MIN_SELECTION_CLICKS} held-out clicks")
        if carved:  # served: the kept form refitted on the whole tail, as without the selection
            newest, rng = tail, rng0
            pick = np.sort(rng.choice(newest, size=min(n_clicks, len(newest)), replace=False))
            prior = fit(pick, rng, keep, **main_k)
        elif keep:
            prior = bent
    if prior.new is not None:  # served: new = published after the newest click the served towers were trained on
        prior = replace(prior, new=replace(prior.new, new_from=float(np.nextafter(clicks.ts.max(), np.inf))))
    if cold_users and len(clicks.items):
        cold = np.flatnonzero(first)  # no click of the user before it (before the freeze)
        if data.frozen:
            cold = cold[clicks.ts[cold] >= data.fit_from]
        curve = prior.pop2_weight > 0 or pop_curve is True

        def fit_cold(rows: np.ndarray, r: np.random.Generator) -> AgePrior:
            rows = np.sort(r.choice(rows, size=min(n_clicks, len(rows)), replace=False))
            return fit(rows, r, curve, fit_scale=True, no_history=cold_window_s > 0, category=False)

        keep = len(cold) >= MIN_COLD_USER_CLICKS
        if keep and select_cold and data.frozen:  # the frozen fit took the new users' clicks out of the tail
            selection["cold_user"] = {"kept": True, "why": "frozen fit: no held-out selection"}
        elif keep and select_cold:  # first-visit clicks of users new in the fitted tail, held out from a trial fit
            val = np.setdiff1d(cold[np.isin(cold, tail)], pick)  # none the main weights were fitted on
            val = np.sort(val_rng.choice(val, size=min(n_clicks, len(val)), replace=False))
            rest = np.setdiff1d(cold, val)
            keep = len(val) >= MIN_SELECTION_CLICKS and len(rest) >= MIN_COLD_USER_CLICKS
            if keep:
                trial = fit_cold(rest, copy.deepcopy(rng))
                keep, selection["cold_user"] = _judge(("main", hits(prior, val, no_history=True)),
                                                      ("cold", hits(trial, val, no_history=True)))
            else:
                keep, selection["cold_user"] = _skipped(val, f"fewer than {MIN_SELECTION_CLICKS} unfitted first-visit "
                                                             f"clicks in the tail or {MIN_COLD_USER_CLICKS} to fit")
        if keep:  # served: refitted on every first-visit click (the held-out ones too), as without the selection
            prior = replace(prior, cold_user=fit_cold(cold, rng))
    return replace(prior, selection=selection or None)


def _fit_on_clicks(pick: np.ndarray, model, catalog, clicks, temperature: float, history_len: int, item_vecs: np.ndarray,
                   max_age_s: float | None, rng: np.random.Generator, popularity: bool, max_items: int,
                   data: PriorFitData, ctr: bool, fit_scale: bool = False, new_items: bool = False,
                   category: bool = False, category_estimator: str = "uniform", no_history: bool = False,
                   pop_curve: bool = False) -> AgePrior:
    """The prior's weights fitted on the clicks ``pick`` (indices into the ``ClickLog``);
    ``fit_scale``: the weight of the tower logit too (``tower_weight``); ``new_items``: the
    ``NewItemTerms`` for items published at or after ``data.fit_from``; ``category``: the
    category term."""
    from feedrank.retrieval.encode import encode_users

    fit_model = model if data.model is None else data.model
    fit_vecs = item_vecs if data.item_vecs is None else data.item_vecs
    users, ts, pos = clicks.user_codes[pick], clicks.ts[pick], clicks.items[pick]
    if data.frozen:
        if data.fit_from is None:
            raise ValueError("PriorFitData(frozen=True) needs fit_from: the time the state is frozen at")
        ts = np.full(len(pick), float(data.fit_from))
    if no_history:  # scored as a user the store knows nothing about
        hist = np.full((len(pick), history_len), -1, dtype=np.int64)
    else:
        hist = clicks.histories(users, ts, history_len)
    uvec = encode_users(fit_model, catalog, hist, ts, item_vecs=fit_vecs)
    keep = np.arange(len(catalog))
    if len(catalog) > max_items:
        keep = np.union1d(rng.choice(len(catalog), size=max_items, replace=False), pos)
    remap = np.full(len(catalog), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    counts, more, names = None, [], []
    ctr0 = 0.0
    use_ctr = data.impressions is not None and len(data.impressions[0]) > 0 and ctr
    if popularity or use_ctr:
        imp = data.impressions if use_ctr else (None, None)
        replay = CounterReplay(len(catalog), clicks.items, clicks.ts, imp[0], imp[1], creator_codes(catalog.creators))
        mats = counters_at(replay, ts, keep)
        counts = mats["clicks"] if popularity else None
        if popularity and pop_curve:  # the popularity curve's bend: log1p(clicks)**2
            more.append(np.square(np.log1p(counts)).astype(np.float32))
            names.append("pop2_weight")
        if popularity and data.trend:
            more.append(np.log1p(mats["recent_clicks"]))
            names.append("trend_weight")
        if use_ctr:
            ctr0 = float(np.clip(len(clicks.items) / max(len(imp[0]), 1), 1e-6, 0.9))
            more.append(smoothed_ctr_ratio(mats["clicks"], mats["impressions"], ctr0, ITEM_CTR_STRENGTH))
            names.append("ctr_weight")
            if np.any(mats["creator_impressions"]):
                more.append(smoothed_ctr_ratio(mats["creator_clicks"], mats["creator_impressions"], ctr0,
                                               CREATOR_CTR_STRENGTH))
                names.append("creator_weight")
    live_until = float(clicks.ts[pick].max()) if data.frozen else None
    n_cats, share, share_fit = 0, None, None
    if category:
        n_cats = int(fit_model.dims.n_categories)

        def cat_feat(sh: CategoryShare | None, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
            aff = AgePrior(0.0, temperature, 0.0, n_categories=n_cats, category_estimator=sh).user_affinity(
                hist[rows], catalog.cat_idx)
            return np.log(aff[:, catalog.cat_idx[keep]]).astype(np.float32)

        if category_estimator == "fitted":  # picked by this fit's likelihood, on a subsample of its clicks
            sub = np.arange(0, len(pick), max(1, -(-len(pick) // CATEGORY_SEARCH_CLICKS)))

            def nll_of(sh: CategoryShare) -> float:
                return fit_age_weight(uvec[sub], fit_vecs[keep], remap[pos[sub]], ts[sub], catalog.published_at[keep],
                                      temperature, max_age_s, max_items=len(keep), rng=rng,
                                      click_counts=None if counts is None else counts[sub],
                                      more_feats=[f[sub] for f in more] + [cat_feat(sh, sub)], live_until=live_until,
                                      fit_scale=fit_scale, new_from=data.fit_from if new_items else None)[2]

            # the population prior's shares: the clicks before every fitted one (point in time)
            share_fit = search_category_share(nll_of, population_shares(clicks.items[clicks.ts < ts.min()],
                                                                        catalog.cat_idx, n_cats))
            share = share_fit.share
        more.append(cat_feat(share))
        names.append("category_weight")
    fb_strength, fits = 0.0, []
    for strength in (FEEDBACK_STRENGTHS if data.feedback is not None else (0.0,)):
        feats = more if not strength else more + [feedback_feature(data.feedback, len(catalog), ts, uvec, keep, strength)]
        fits.append(fit_age_weight(uvec, fit_vecs[keep], remap[pos], ts, catalog.published_at[keep], temperature, max_age_s,
                                   max_items=len(keep), rng=rng, click_counts=counts, more_feats=feats,
                                   live_until=live_until, fit_scale=fit_scale,
                                   new_from=data.fit_from if new_items else None) + (strength,))
    w, nll0, nll1, fb_strength = min(fits, key=lambda f: f[2])
    if fb_strength:
        names = names + ["feedback_weight"]
    tower_weight, new = 1.0, None
    if fit_scale:
        w, tower_weight = w[:-1], float(w[-1])
    if new_items:
        n_new = 2 + (counts is not None) + fit_scale
        nw, w = [float(v) for v in w[len(w) - n_new:]], w[:len(w) - n_new]
        new = NewItemTerms(float(data.fit_from), nw[0], nw[1], nw[2] if counts is not None else 0.0,
                           nw[-1] if fit_scale else 0.0)
    ref = float(np.nanmax(catalog.published_at)) if np.isfinite(catalog.published_at).any() else 0.0
    extra = {n: float(v) for n, v in zip(names, w[len(w) - len(names):])}
    if share is not None and share.population is not None:  # served: the shares of all the training clicks
        share = replace(share, population=tuple(population_shares(clicks.items, catalog.cat_idx, n_cats).tolist()))
    return AgePrior(float(w[0]), temperature, ref, float(w[1]) if counts is not None else 0.0, len(pick),
                    round(nll0, 5), round(nll1, 5), ctr0=ctr0, tower_weight=tower_weight,
                    feedback_strength=fb_strength if extra.get("feedback_weight") else 0.0, new=new,
                    n_categories=n_cats, category_estimator=share,
                    category_search=None if share_fit is None else share_fit.to_json(),
                    **extra)


def rescore_with_prior(prior: AgePrior, user_vec: np.ndarray, cand: np.ndarray, cand_vecs: np.ndarray,
                       published_at: np.ndarray, now: float, k: int,
                       clicks: np.ndarray | None = None, counters: ItemCounters | None = None,
                       has_history: bool = True, affinity: np.ndarray | None = None,
                       categories: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of candidates (M,) by ``u.v/T + prior`` at ``now`` (``AgePrior.scores``):
    cand_vecs (M, D), published_at (M,), clicks (M,) counts so far, or ``counters`` (the
    candidates' live counters incl. impressions and creator totals: the smoothed-CTR terms
    need them; without them those terms are left out); ``affinity`` (C,) the user's category
    shares and ``categories`` (M,) the candidates' category codes (the category term).
    ``has_history`` False (the user has no clicks): the prior's ``cold_user`` weights, when
    fitted. Returns (items (k,), scores (k,) float32), best first, ties by item index."""
    if not len(cand):
        return cand.astype(np.int64), np.zeros(0, dtype=np.float32)
    prior = prior.for_user(has_history)
    s = prior.scores(user_vec[None, :], cand_vecs, published_at, now, clicks, counters,
                     None if affinity is None else np.asarray(affinity)[None, :], categories)[0]
    k = min(k, len(cand))
    top = np.argpartition(-s, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
    top = top[np.lexsort((cand[top], -s[top]))]
    return cand[top].astype(np.int64), s[top].astype(np.float32)


def _recall_json(hits: dict[int, np.ndarray]) -> dict[str, float]:
    return {f"recall@{k}": round(float(h.mean()), 6) if len(h) else 0.0 for k, h in hits.items()}


Hits = dict[int, np.ndarray]  # click_hits: {k: (Q,) bool}


def _judge(incumbent: tuple[str, Hits], challenger: tuple[str, Hits]) -> tuple[bool, dict]:
    """``prefer`` on two (name, ``click_hits``) pairs: (kept, the record ``AgePrior.selection`` keeps)."""
    (name_in, hits_in), (name_ch, hits_ch) = incumbent, challenger
    keep, info = prefer(hits_ch, hits_in)
    return keep, {"kept": keep, **info, name_in: _recall_json(hits_in), name_ch: _recall_json(hits_ch)}


def _skipped(held_out: np.ndarray, why: str) -> tuple[bool, dict]:
    """No comparison (too few clicks): the simpler prior is kept, and why."""
    return False, {"kept": False, "held_out_clicks": int(len(held_out)), "why": why}


def click_recall(prior: AgePrior, model, item_vecs: np.ndarray, catalog, clicks, pick: np.ndarray, history_len: int,
                 max_age_s: float | None, ks: tuple[int, ...] = (10, 100), **kw) -> dict[int, float]:
    """Recall@k of the training clicks ``pick`` under ``prior``: {k: share of the clicks whose
    item ranks in the top k} (``click_hits``)."""
    hits = click_hits(prior, model, item_vecs, catalog, clicks, pick, history_len, max_age_s, ks, **kw)
    return {k: float(h.mean()) if len(h) else 0.0 for k, h in hits.items()}


def prefer(challenger: dict[int, np.ndarray], incumbent: dict[int, np.ndarray]) -> tuple[bool, dict]:
    """Whether the challenger ranks the same held-out clicks better: per click, hits at 10
    plus hits at 100 (``click_hits``); kept when its mean gain is above one standard error
    of the paired differences (the one-standard-error rule: a tie keeps the simpler model).
    Returns (kept, the comparison for the manifest)."""
    d = (challenger[10].astype(np.float64) + challenger[100]) - (incumbent[10].astype(np.float64) + incumbent[100])
    if len(d) < 2:
        return False, {"held_out_clicks": int(len(d)), "why": "fewer than 2 held-out clicks"}
    gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    return gain > se, {"held_out_clicks": int(len(d)), "gain": round(gain, 6), "standard_error": round(se, 6)}


def click_hits(prior: AgePrior, model, item_vecs: np.ndarray, catalog, clicks, pick: np.ndarray, history_len: int,
               max_age_s: float | None, ks: tuple[int, ...] = (10, 100), no_history: bool = False,
               max_items: int = 20_000, seed: int = 0) -> dict[int, np.ndarray]:
    """Whether each training click of ``pick`` ranks in the top k under ``prior``, scored as
    serving scores a request at the click's time: the user's vector from the clicks before it
    (``no_history``: an empty history), click counts of every click before it, candidates =
    the items live then minus the user's earlier clicks. Above ``max_items`` items, a uniform
    sample of that many stands for the catalogue: the items of the sample ahead of the click,
    times ``N / max_items``, are its estimated rank. Returns {k: (Q,) bool}."""
    from feedrank.retrieval.encode import encode_users

    users, ts, pos = clicks.user_codes[pick], clicks.ts[pick], clicks.items[pick]
    hist = (np.full((len(pick), history_len), -1, dtype=np.int64) if no_history
            else clicks.histories(users, ts, history_len))
    uvec = encode_users(model, catalog, hist, ts, item_vecs=item_vecs)
    n = len(catalog)
    keep, per_item = np.arange(n), 1.0
    counted = np.ones(n, dtype=bool)  # the items whose lead counts (the sample; not the clicked items added to it)
    if n > max_items:
        sample = np.random.default_rng(seed).choice(n, size=max_items, replace=False)
        keep, per_item = np.union1d(sample, pos), n / max_items
        counted = np.isin(keep, sample)
    col = np.full(n, -1, dtype=np.int64)
    col[keep] = np.arange(len(keep))
    counts = counters_at(CounterReplay(n, clicks.items, clicks.ts), ts, keep)["clicks"]
    aff = prior.user_affinity(hist, catalog.cat_idx) if prior.category_weight else None
    pub = np.nan_to_num(np.asarray(catalog.published_at, dtype=np.float64)[keep], nan=-np.inf)
    vecs, cats = item_vecs[keep], np.asarray(catalog.cat_idx)[keep]
    ahead = np.zeros(len(pick), dtype=np.float64)
    for q in range(len(pick)):
        t = float(ts[q])
        s = prior.scores(uvec[q][None], vecs, catalog.published_at[keep], t, clicks=counts[q],
                         affinity=None if aff is None else aff[q:q + 1], categories=cats)[0]
        ok = pub <= t
        if max_age_s is not None:
            ok &= t - pub < max_age_s
        seen = col[hist[q][hist[q] >= 0]]
        ok[seen[seen >= 0]] = False
        ahead[q] = int((ok & counted & (s > s[col[pos[q]]])).sum()) * per_item
    return {k: ahead < k for k in ks}
