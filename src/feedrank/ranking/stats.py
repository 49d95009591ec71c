"""Online engagement counters for the ranker's engagement features (serving side).

Training computes the same counters point-in-time (``pipeline/examples.py``); this holds
them for the live system: built from all events when a model is trained (saved in the
bundle as ``ranker_state.npz``), then updated by ``observe`` as events arrive.

    st = EngagementState.build(...)              # or EngagementState.load(path)
    st.observe(user_id, item_idx, "click", position=2, ts=t)
    eng = st.engagement(user_id, cand, now)      # an ``Engagement`` for (n,) candidates

Memory: items x 14 + creators x 4 float64 and, per known user, 6 x n_categories + 5
(~850 bytes a user at 13 categories plus its id: ~0.9 GB at the 1M-user cap). Serving caps the users kept
(``limit_users``: the least recently updated go first; their next feed starts from zeros,
as a new user's), so a server that meets millions of new users stays bounded.
Decayed counters keep (value, last update time) and decay lazily: exact, O(1) per event.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from feedrank.ranking.features import DECAY_TAUS_S, N_POSITIONS, USER_DECAY_TAU_S, CategoryEngagement, Engagement

ITEM_FIELDS = ("eimps", "clicks", "hides", "imps", "dwell_sum", "dwell_n")
DECAY_FIELDS = ("clicks_6h", "eimps_6h", "clicks_24h", "eimps_24h")
CREATOR_FIELDS = ("eimps", "clicks", "dwell_sum", "dwell_n")


def row_width(n_categories: int) -> int:
    """Length of a user's counter row (see ``EngagementState``)."""
    return 6 * n_categories + 5


# columns of the item-major block (``EngagementState._items``): the counters, then copies of
# the static per-item codes the read needs (exact in float64), so one row gather serves all
_ITEM = slice(0, len(ITEM_FIELDS))
_DECAY = slice(len(ITEM_FIELDS), len(ITEM_FIELDS) + len(DECAY_FIELDS))
_DECAY_T = _DECAY.stop
_NEW, _CAT, _CODE = _DECAY_T + 1, _DECAY_T + 2, _DECAY_T + 3
_BLOCK_WIDTH = _CODE + 1
# the block's columns an impression adds to: item eimps, item imps, decayed eimps (6 h, 24 h)
_IMPRESSION_COLS = np.array([_ITEM.start + ITEM_FIELDS.index("eimps"), _ITEM.start + ITEM_FIELDS.index("imps"),
                             _DECAY.start + DECAY_FIELDS.index("eimps_6h"), _DECAY.start + DECAY_FIELDS.index("eimps_24h")])


def _item_block(n: int, item_cat: np.ndarray, creator_codes: np.ndarray, creator_new: np.ndarray) -> np.ndarray:
    """(n, _BLOCK_WIDTH) zeroed counters with the static columns filled."""
    b = np.zeros((n, _BLOCK_WIDTH))
    b[:, _NEW], b[:, _CAT], b[:, _CODE] = creator_new, item_cat, creator_codes
    return b


class EngagementState:
    """Thread-safe counters. ``item`` (6, N), ``decay`` (4, N) values at ``decay_t`` (N,),
    ``creator`` (4, K), per-user rows (``row_width(C)`` = 6 * C + 5,): category impressions,
    clicks, hides, then total impressions and clicks, then category and total
    examination-weighted impressions, then the decayed (``USER_DECAY_TAU_S``) category
    clicks, category weighted impressions and total clicks, valued at the row's last
    column (the time of its last update). ``category_ctr`` / ``category_share`` (C,) are the
    spec's category priors (zeros when unknown)."""

    def __init__(self, n_items: int, n_categories: int, item_cat: np.ndarray, creator_codes: np.ndarray,
                 creator_new: np.ndarray, exam: np.ndarray, category_ctr: np.ndarray | None = None,
                 category_share: np.ndarray | None = None) -> None:
        self.n_categories = n_categories
        self.category_ctr = np.zeros(n_categories) if category_ctr is None else np.asarray(category_ctr, np.float64)
        self.category_share = np.zeros(n_categories) if category_share is None else np.asarray(category_share, np.float64)
        self.item_cat = np.asarray(item_cat, dtype=np.int64)
        self.creator_codes = np.asarray(creator_codes, dtype=np.int64)
        self.exam = np.asarray(exam, dtype=np.float64)
        for name, arr in (("item_cat", self.item_cat), ("creator_codes", self.creator_codes),
                          ("creator_new", np.asarray(creator_new))):
            if len(arr) != n_items:
                raise ValueError(f"EngagementState: {name} has {len(arr)} entries, expected one per item ({n_items})")
        self._items = _item_block(n_items, self.item_cat, self.creator_codes, np.asarray(creator_new, np.float64))
        self._creators = np.zeros((int(self.creator_codes.max(initial=-1)) + 1, len(CREATOR_FIELDS)))
        self._bind_views()
        # user id -> counter row, least recently updated first (``limit_users``)
        self.users: OrderedDict[str, np.ndarray] = OrderedDict()
        self.max_users: int | None = None  # None: keep every user (training, offline tools)
        self._lock = threading.Lock()

    def _bind_views(self) -> None:
        """``item`` (6, N), ``decay`` (4, N), ``decay_t`` (N,), ``creator_new`` (N,) and
        ``creator`` (4, K) are views of item-major blocks (one row per item / creator), so a
        request's gather of its candidates' counters touches one or two cache lines per item
        instead of one per field (``engagement``)."""
        b = self._items
        self.item = b[:, _ITEM].T
        self.decay = b[:, _DECAY].T
        self.decay_t = b[:, _DECAY_T]
        self.creator_new = b[:, _NEW]
        self.creator = self._creators.T

    # ------------------------------------------------------------------ bulk
    def load_arrays(self, item: np.ndarray, decay: np.ndarray, decay_t: np.ndarray, creator: np.ndarray,
                    user_ids: np.ndarray, user_rows: np.ndarray) -> EngagementState:
        self.item[:] = item
        self.decay[:] = decay
        self.decay_t[:] = decay_t
        self.creator[:] = creator
        w = row_width(self.n_categories)
        if user_rows.ndim == 2 and user_rows.shape[1] < w:  # a state saved before the weighted columns: zeros
            user_rows = np.concatenate([user_rows, np.zeros((len(user_rows), w - user_rows.shape[1]))], axis=1)
        self.users = OrderedDict((str(u), row.astype(np.float64).copy()) for u, row in zip(user_ids.tolist(), user_rows))
        if self.max_users is not None:
            self._evict_users()
        return self

    def limit_users(self, max_users: int | None) -> None:
        """Keep at most ``max_users`` users' rows (None: all): beyond it, the least recently
        updated user's row is dropped when a new user's is made (now, if already over)."""
        if max_users is not None and int(max_users) < 1:
            raise ValueError(f"EngagementState.limit_users: max_users must be >= 1 or None, got {max_users}")
        with self._lock:
            self.max_users = None if max_users is None else int(max_users)
            if self.max_users is not None:
                self._evict_users()

    def _evict_users(self) -> None:
        """Under ``_lock`` (or before sharing): drop the least recently updated rows over the cap."""
        users = self.users
        while len(users) > self.max_users:
            users.popitem(last=False)

    def _row_to_update(self, user_id: str, ts: float) -> np.ndarray:
        """Under ``_lock``: the user's row, made (last update ``ts``) if new, and marked as
        the most recently updated."""
        users = self.users
        row = users.get(user_id)
        if row is None:
            row = users[user_id] = np.zeros(row_width(self.n_categories))
            row[-1] = ts
            if self.max_users is not None and len(users) > self.max_users:
                self._evict_users()
        elif self.max_users is not None:
            users.move_to_end(user_id)
        return row

    def save(self, path: Path) -> None:
        ids = np.asarray(list(self.users), dtype=str)
        rows = np.stack(list(self.users.values())) if self.users else np.zeros((0, row_width(self.n_categories)))
        np.savez(path, item=self.item, decay=self.decay, decay_t=self.decay_t, creator=self.creator,
                 user_ids=ids, user_rows=rows, exam=self.exam, creator_codes=self.creator_codes,
                 creator_new=self.creator_new, item_cat=self.item_cat, category_ctr=self.category_ctr,
                 category_share=self.category_share)

    @classmethod
    def load(cls, path: Path, n_categories: int) -> EngagementState:
        with np.load(path, allow_pickle=False) as z:
            priors = [z[k] if k in z.files else None for k in ("category_ctr", "category_share")]
            st = cls(z["item"].shape[1], n_categories, z["item_cat"], z["creator_codes"], z["creator_new"], z["exam"],
                     *priors)
            return st.load_arrays(z["item"], z["decay"], z["decay_t"], z["creator"], z["user_ids"], z["user_rows"])

    def grow(self, item_cat: np.ndarray, creator_new: np.ndarray | None = None) -> None:
        """Zeroed rows for items appended to the catalogue (``POST /v1/items``): ``item_cat``
        (M,) their category indices, ``creator_new`` (M,) 1.0 for the protected group. Each
        gets a creator row of its own (its creator's history is not known here)."""
        m = len(item_cat)
        if not m:
            return
        with self._lock:
            k0 = self.creator.shape[1]
            self.item_cat = np.concatenate([self.item_cat, np.asarray(item_cat, dtype=np.int64)])
            self.creator_codes = np.concatenate([self.creator_codes, np.arange(k0, k0 + m, dtype=np.int64)])
            extra = np.zeros(m) if creator_new is None else np.asarray(creator_new, dtype=np.float64)
            self._items = np.concatenate([self._items, _item_block(m, self.item_cat[-m:], self.creator_codes[-m:], extra)])
            self._creators = np.concatenate([self._creators, np.zeros((m, self._creators.shape[1]))])
            self._bind_views()

    # ------------------------------------------------------------------ updates
    def observe(self, user_id: str, item_idx: int, kind: str, position: int | None, ts: float,
                dwell_ms: float | None = None) -> None:
        """Fold one event in (kinds: impression, click, hide, dwell; others ignored)."""
        if kind not in ("impression", "click", "hide", "dwell"):
            return
        i = int(item_idx)
        c = int(self.item_cat[i])
        k = int(self.creator_codes[i])
        e = float(self.exam[min(max(position or 0, 0), N_POSITIONS - 1)])
        with self._lock:
            row = self._row_to_update(user_id, ts)
            C = self.n_categories
            dt = ts - row[-1]
            if dt > 0:  # decay the user's recent counters to now
                row[4 * C + 3: 6 * C + 4] *= np.exp(-dt / USER_DECAY_TAU_S)
                row[-1] = ts
            self._decay_to(i, ts)
            if kind == "impression":
                row[c] += 1
                row[3 * self.n_categories] += 1
                row[3 * self.n_categories + 2 + c] += e
                row[4 * self.n_categories + 2] += e
                row[5 * C + 3 + c] += e
                self.item[0, i] += e
                self.item[3, i] += 1
                self.decay[1, i] += e
                self.decay[3, i] += e
                self.creator[0, k] += e
            elif kind == "click":
                row[self.n_categories + c] += 1
                row[3 * self.n_categories + 1] += 1
                row[4 * C + 3 + c] += 1
                row[6 * C + 3] += 1
                self.item[1, i] += 1
                self.decay[0, i] += 1
                self.decay[2, i] += 1
                self.creator[1, k] += 1
            elif kind == "hide":
                row[2 * self.n_categories + c] += 1
                self.item[2, i] += 1
            elif dwell_ms is not None and np.isfinite(dwell_ms):
                v = float(np.log1p(max(dwell_ms, 0.0) / 1000.0))
                self.item[4, i] += v
                self.item[5, i] += 1
                self.creator[2, k] += v
                self.creator[3, k] += 1

    def observe_impressions(self, user_id: str, items: np.ndarray, positions: np.ndarray, ts: float) -> None:
        """``observe(user_id, i, "impression", p, ts)`` for each (i, p) in order (one feed's
        impressions: one user, one time), vectorised; the same counters, sums in the same order."""
        items = np.asarray(items, dtype=np.int64)
        if not len(items):
            return
        if items.ndim != 1 or items.min() < 0 or items.max() >= len(self.item_cat):
            # a negative row would alias another (-1 is the last) and defeat the distinct check below
            raise ValueError(f"observe_impressions: item rows must be a 1-D array in [0, {len(self.item_cat)}), "
                             f"got shape {items.shape}, min {items.min()}, max {items.max()}")
        C = self.n_categories
        e = self.exam[np.minimum(np.maximum(np.asarray(positions, dtype=np.int64), 0), N_POSITIONS - 1)]
        with self._lock:
            c = self.item_cat[items]
            k = self.creator_codes[items]
            row = self._row_to_update(user_id, ts)
            dt = ts - row[-1]
            if dt > 0:
                row[4 * C + 3: 6 * C + 4] *= np.exp(-dt / USER_DECAY_TAU_S)
                row[-1] = ts
            u = np.sort(items)  # each distinct item decayed to ts once, as observe does
            distinct = bool((u[1:] != u[:-1]).all())
            if not distinct:
                u = np.unique(u)
            dt = np.maximum(ts - self.decay_t[u], 0.0)
            u, dt = u[dt > 0], dt[dt > 0]
            if len(u):
                t6, t24 = DECAY_TAUS_S
                f6, f24 = np.exp(-dt / t6), np.exp(-dt / t24)
                self.decay[:, u] *= np.stack([f6, f6, f24, f24])
                self.decay_t[u] = ts
            n = len(items)
            ones = np.ones(n)
            # the user's row in one unbuffered add: category impressions, total impressions, category
            # and total weighted impressions, decayed category weighted impressions; the groups hit
            # disjoint cells and each cell gets its adds in item order, as five separate adds did
            np.add.at(row, np.concatenate([c, np.full(n, 3 * C), 3 * C + 2 + c, np.full(n, 4 * C + 2), 5 * C + 3 + c]),
                      np.concatenate([ones, ones, e, e, e]))
            if distinct:  # a feed's distinct items: one add per cell, all four columns at once
                self._items[items[:, None], _IMPRESSION_COLS] += np.stack([e, ones, e, e], axis=1)
            else:
                np.add.at(self.item[0], items, e)
                np.add.at(self.item[3], items, ones)
                np.add.at(self.decay[1], items, e)
                np.add.at(self.decay[3], items, e)
            np.add.at(self.creator[0], k, e)

    def _decay_to(self, i: int, ts: float) -> None:
        dt = max(ts - self.decay_t[i], 0.0)
        if dt > 0:
            t6, t24 = DECAY_TAUS_S
            self.decay[:, i] *= np.array([np.exp(-dt / t6), np.exp(-dt / t6), np.exp(-dt / t24), np.exp(-dt / t24)])
            self.decay_t[i] = ts

    # ------------------------------------------------------------------ reads
    def engagement_by_category(self, user_id: str, items: np.ndarray, now: float) -> CategoryEngagement:
        """``engagement`` split for serving (``features.CategoryEngagement``): the user's
        fields once per category code (slices of a copy of the user's row, no per-candidate
        gathers) and the item and creator fields per candidate; the features computed from
        it are bitwise those of ``engagement`` (tested)."""
        items = np.asarray(items, dtype=np.int64)
        C = self.n_categories
        one = np.zeros(1)
        with self._lock:
            row = self.users.get(user_id)
            r = np.zeros(row_width(C)) if row is None else row.copy()  # a copy: observe updates rows in place
            blk = np.ascontiguousarray(self._items[items].T)  # (_BLOCK_WIDTH, n): one row gather per item
            cr = self._creators[blk[_CODE].astype(np.int64)].T
        cats = blk[_CAT].astype(np.int64)
        dt = np.maximum(now - blk[_DECAY_T], 0.0)
        d6, d24 = np.exp(-dt / DECAY_TAUS_S[0]), np.exp(-dt / DECAY_TAUS_S[1])
        dec, it = blk[_DECAY], blk[_ITEM]
        du = 1.0 if row is None else float(np.exp(-max(now - r[-1], 0.0) / USER_DECAY_TAU_S))
        zc = np.zeros(C)
        per_category = Engagement(
            user_cat_imps=r[:C], user_cat_clicks=r[C:2 * C], user_cat_hides=r[2 * C:3 * C],
            user_imps=r[3 * C:3 * C + 1], user_clicks=r[3 * C + 1:3 * C + 2],
            item_eimps=one, item_clicks=one, item_hides=one, item_imps=one, item_clicks_6h=one, item_eimps_6h=one,
            item_clicks_24h=one, item_eimps_24h=one, item_dwell_sum=one, item_dwell_n=one,
            creator_eimps=one, creator_clicks=one, creator_dwell_sum=one, creator_dwell_n=one, creator_is_new=one,
            user_cat_eimps=r[3 * C + 2:4 * C + 2], user_eimps=r[4 * C + 2:4 * C + 3],
            category_ctr=self.category_ctr if len(self.category_ctr) == C else zc,
            category_click_share=self.category_share if len(self.category_share) == C else zc,
            user_cat_clicks_3d=zc if row is None else r[4 * C + 3:5 * C + 3] * du,
            user_cat_eimps_3d=zc if row is None else r[5 * C + 3:6 * C + 3] * du,
            user_clicks_3d=one if row is None else r[6 * C + 3:6 * C + 4] * du,
        )
        per_item = Engagement(
            user_cat_imps=one, user_cat_clicks=one, user_cat_hides=one, user_imps=one, user_clicks=one,
            item_eimps=it[0], item_clicks=it[1], item_hides=it[2], item_imps=it[3],
            item_clicks_6h=dec[0] * d6, item_eimps_6h=dec[1] * d6,
            item_clicks_24h=dec[2] * d24, item_eimps_24h=dec[3] * d24,
            item_dwell_sum=it[4], item_dwell_n=it[5],
            creator_eimps=cr[0], creator_clicks=cr[1], creator_dwell_sum=cr[2], creator_dwell_n=cr[3],
            creator_is_new=blk[_NEW], user_cat_eimps=one, user_eimps=one, category_ctr=one, category_click_share=one,
            user_cat_clicks_3d=one, user_cat_eimps_3d=one, user_clicks_3d=one,
        )
        return CategoryEngagement(per_category, per_item, cats)

    def engagement(self, user_id: str, items: np.ndarray, now: float) -> Engagement:
        """The raw counters for (n,) candidate item indices of one user at ``now``."""
        items = np.asarray(items, dtype=np.int64)
        n = len(items)
        C = self.n_categories
        with self._lock:
            row = self.users.get(user_id)
            blk = np.ascontiguousarray(self._items[items].T)  # (_BLOCK_WIDTH, n): one row gather per item
            cats = blk[_CAT].astype(np.int64)
            dt = np.maximum(now - blk[_DECAY_T], 0.0)
            d6, d24 = np.exp(-dt / DECAY_TAUS_S[0]), np.exp(-dt / DECAY_TAUS_S[1])
            dec = blk[_DECAY]
            it = blk[_ITEM]
            cr = self._creators[blk[_CODE].astype(np.int64)].T
            zero = np.zeros(n)
            du = 1.0 if row is None else float(np.exp(-max(now - row[-1], 0.0) / USER_DECAY_TAU_S))
            return Engagement(
                user_cat_imps=zero if row is None else row[cats],
                user_cat_clicks=zero if row is None else row[C + cats],
                user_cat_hides=zero if row is None else row[2 * C + cats],
                user_imps=np.full(n, 0.0 if row is None else row[3 * C]),
                user_clicks=np.full(n, 0.0 if row is None else row[3 * C + 1]),
                item_eimps=it[0], item_clicks=it[1], item_hides=it[2], item_imps=it[3],
                item_clicks_6h=dec[0] * d6, item_eimps_6h=dec[1] * d6,
                item_clicks_24h=dec[2] * d24, item_eimps_24h=dec[3] * d24,
                item_dwell_sum=it[4], item_dwell_n=it[5],
                creator_eimps=cr[0], creator_clicks=cr[1], creator_dwell_sum=cr[2], creator_dwell_n=cr[3],
                creator_is_new=blk[_NEW],
                user_cat_eimps=zero if row is None else row[3 * C + 2 + cats],
                user_eimps=np.full(n, 0.0 if row is None else row[4 * C + 2]),
                category_ctr=self.category_ctr[cats] if len(self.category_ctr) == C else zero,
                category_click_share=self.category_share[cats] if len(self.category_share) == C else zero,
                user_cat_clicks_3d=zero if row is None else row[4 * C + 3 + cats] * du,
                user_cat_eimps_3d=zero if row is None else row[5 * C + 3 + cats] * du,
                user_clicks_3d=np.full(n, 0.0 if row is None else row[6 * C + 3] * du),
            )
