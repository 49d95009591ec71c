"""The synthetic world's ground truth, by string id: what a perfect ranker would know.

    truth = WorldTruth.load("var/world")                 # reads var/world/truth/world.{npz,json}
    a = truth.attractiveness(users, items, ts)           # (n,) in (0, 1)
    p = truth.click_probability(users, items, ts, pos)   # exam(pos) * a
    order = truth.oracle_order("u42", candidates, ts)    # best-first by true attractiveness

Ids are parsed from ``u<idx>`` / ``i<idx>`` / ``c<idx>`` (vectorised); integer arrays are taken
as indices directly. Timestamps are float epoch seconds (scalars broadcast). Unknown or
malformed ids raise ``NotFound``. Formulas: see ``world.py`` and docs/synthetic-world.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedrank.data.synth.world import GROUPS, World, WorldConfig
from feedrank.errors import NotFound

TRUTH_DIR = "truth"


def parse_ids(ids: Any, prefix: str, n: int, what: str) -> np.ndarray:
    """``<prefix><idx>`` strings (or integer indices) -> (len,) int64 indices in [0, n).

    Raises:
        NotFound: an id is malformed or outside the world (the first few are named).
    """
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        idx = arr.astype(np.int64).ravel()
    else:
        strs = pa.array(arr.ravel(), type=pa.string())
        ok = pc.fill_null(pc.match_substring_regex(strs, f"^{prefix}[0-9]{{1,18}}$"), False)
        okn = np.asarray(ok)
        if not okn.all():
            bad = [strs[int(r)].as_py() for r in np.flatnonzero(~okn)[:5]]
            raise NotFound(f"{int((~okn).sum())} {what} id(s) not in the synthetic world (expected '{prefix}<index>'): {bad}")
        idx = np.asarray(pc.cast(pc.utf8_slice_codeunits(strs, 1), pa.int64()))
    out = (idx < 0) | (idx >= n)
    if out.any():
        bad = [f"{prefix}{int(v)}" for v in idx[out][:5]]
        raise NotFound(f"{int(out.sum())} {what} id(s) not in the synthetic world ({n} {what}s): {bad}")
    return idx.reshape(arr.shape) if arr.ndim else idx


class WorldTruth:
    """String-id access to a ``World`` (attractiveness, click model, preferences, groups)."""

    def __init__(self, world: World, root: Path | None = None) -> None:
        self.world = world
        self.root = root

    @classmethod
    def load(cls, dataset_dir: str | Path) -> WorldTruth:
        """Load from a synthetic dataset folder (or its ``truth/`` folder itself)."""
        root = Path(dataset_dir)
        truth_dir = root / TRUTH_DIR if (root / TRUTH_DIR).is_dir() else root
        if not (truth_dir / "world.json").exists():
            raise NotFound(f"{root}: no synthetic-world truth (expected {root / TRUTH_DIR}/world.json); "
                           "only datasets written by `feedrank data synth` have one")
        return cls(World.load(truth_dir), truth_dir)

    # ------------------------------------------------------------------ facts
    @property
    def config(self) -> WorldConfig:
        return self.world.config

    @property
    def category_names(self) -> list[str]:
        return list(self.world.category_names)

    @property
    def period(self) -> tuple[float, float]:
        """(start, end) of the simulated period, epoch seconds."""
        return self.config.start, self.config.end

    @property
    def eta(self) -> float:
        return self.config.eta

    def user_index(self, user_ids: Any) -> np.ndarray:
        return parse_ids(user_ids, "u", self.config.n_users, "user")

    def item_index(self, item_ids: Any) -> np.ndarray:
        return parse_ids(item_ids, "i", self.config.n_items, "item")

    def _ts(self, ts: Any, n: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(ts, dtype=np.float64), (n,))

    # ------------------------------------------------------------------ the model
    def attractiveness(self, user_ids: Any, item_ids: Any, ts: Any) -> np.ndarray:
        """True a(u, i, t) for aligned arrays (ts may be a scalar). Returns: (n,) float64 in (0, 1)."""
        u = self.user_index(user_ids)
        i = self.item_index(item_ids)
        u, i = np.broadcast_arrays(u, i)
        return self.world.attractiveness(u.ravel(), i.ravel(), self._ts(ts, u.size))

    def examination(self, position: Any) -> np.ndarray:
        """exam(pos) = (1 / (pos + 1)) ** eta, 0-based positions. Returns: float64 array."""
        return self.world.examination(np.asarray(position))

    def click_probability(self, user_ids: Any, item_ids: Any, ts: Any, positions: Any) -> np.ndarray:
        """P(click) = exam(pos) * a(u, i, t). Returns: (n,) float64."""
        a = self.attractiveness(user_ids, item_ids, ts)
        return self.examination(np.broadcast_to(np.asarray(positions), a.shape)) * a

    def user_preferences(self, user_ids: Any, ts: Any) -> np.ndarray:
        """Topic preferences pref_u(t); columns follow ``category_names``. Returns: (n, C) float32."""
        u = np.atleast_1d(self.user_index(user_ids))
        return self.world.prefs_at(u, self._ts(ts, len(u)))

    def user_preferences_start_end(self, user_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(p0, p1): preferences at the start and end of the period. Returns: two (n, C) float32."""
        u = np.atleast_1d(self.user_index(user_ids))
        return self.world.user_p0[u], self.world.user_p1[u]

    def item_category(self, item_ids: Any) -> np.ndarray:
        """Category names of items. Returns: (n,) object array of str."""
        i = np.atleast_1d(self.item_index(item_ids))
        return np.asarray(self.world.category_names, dtype=object)[self.world.item_cat[i]]

    def item_quality(self, item_ids: Any) -> np.ndarray:
        """Latent quality q_i. Returns: (n,) float32."""
        return self.world.item_quality[np.atleast_1d(self.item_index(item_ids))]

    def creator_groups(self) -> dict[str, str]:
        """creator id -> group name (``established`` or ``new``)."""
        g = self.world.creator_group
        return {f"c{k}": GROUPS[int(v)] for k, v in enumerate(g)}

    def item_creator_group(self, item_ids: Any) -> np.ndarray:
        """Group of each item's creator. Returns: (n,) object array of str."""
        i = np.atleast_1d(self.item_index(item_ids))
        return np.asarray(GROUPS, dtype=object)[self.world.creator_group[self.world.item_creator[i]]]

    def live_items(self, ts: float) -> np.ndarray:
        """Ids of items live at ``ts`` (published, age < max_age), publish order. Returns: (m,) object array."""
        pub = self.world.item_pub
        lo = np.searchsorted(pub, ts - self.config.max_age_s, side="right")
        hi = np.searchsorted(pub, ts, side="right")
        return np.asarray([f"i{k}" for k in range(lo, hi)], dtype=object)

    def oracle_order(self, user_id: str, item_ids: Any, ts: float) -> np.ndarray:
        """``item_ids`` sorted best-first by true attractiveness for ``user_id`` at ``ts``
        (under the position-based model this maximises expected clicks). Returns: (n,) ids."""
        items = np.atleast_1d(np.asarray(item_ids))
        a = self.attractiveness(np.full(len(items), user_id, dtype=object), items, ts)
        return items[np.argsort(-a, kind="stable")]
