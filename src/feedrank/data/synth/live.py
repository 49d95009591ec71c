"""The synthetic world acting on live feeds (``feedrank simulate``), and its breaking news.

    live = LiveWorld(World.load("var/world/truth"), BreakingNews(start_minute=30), seed=0)
    users = live.visitors(rng, 120, now)                        # who opens the app this minute
    items = live.breaking_items(now)                            # records for POST /v1/items
    clicks, dwell_ms = live.feedback(rng, "u42", item_ids, positions, now)

Pure: randomness comes in as a generator and time as ``now`` (epoch seconds); nothing here
reads a clock, a file or the network.

Clicks follow the world's position-based model: P(click at 0-based slot k) =
exam(k) * a(u, i, t) with the world's ``a`` and ``exam``. Breaking-news items (ids
``b<n>``) have their own attractiveness: ``interested`` users find them
``appeal_interested`` attractive, the others ``appeal_other``, decaying with the world's
item time constant. Their topic is ``BreakingNews.category``: by default (None) the
world's rarest topic, and then the interested users are the share with the strongest
preference for it (a rare topic suddenly in the news); a name the world does not have
makes a brand-new topic, with a random share interested. Anything else the server shows
(items added by other clients) is clicked with probability ``exam(k) * unknown_appeal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feedrank.data.synth.world import World

BREAKING_PREFIX = "b"


@dataclass(frozen=True)
class BreakingNews:
    """A topic that appears during the run: ``n_items`` items published at ``start_minute``
    (simulated), preferred by a share ``interested_share`` of the users."""

    start_minute: float = 30.0
    category: str | None = None       # None: the world's rarest topic; a new name: a new topic
    n_items: int = 12
    interested_share: float = 0.35
    appeal_interested: float = 0.6
    appeal_other: float = 0.03
    unknown_appeal: float = 0.02
    creator: str = "newsdesk"


class LiveWorld:
    """The world's users, their visits and their clicks on served feeds."""

    def __init__(self, world: World, breaking: BreakingNews | None = None, seed: int = 0) -> None:
        self.world = world
        self.cfg = world.config
        self.breaking = breaking or BreakingNews()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 77]))
        names = list(world.category_names)
        cat = self.breaking.category
        if cat is None:
            pop = np.asarray(world.extra.get("category_popularity") or world.user_p1.mean(axis=0), dtype=np.float64)
            cat = names[int(np.argmin(pop))]
        self.category = cat
        self.is_new_topic = cat not in names
        n = self.cfg.n_users
        if self.is_new_topic:
            self.interested = rng.random(n) < self.breaking.interested_share
        else:  # the users who care most about this topic (preference at the end of the world)
            pref = world.user_p1[:, names.index(cat)].astype(np.float64) + 1e-9 * rng.random(n)
            k = int(round(self.breaking.interested_share * n))
            self.interested = np.zeros(n, dtype=bool)
            if k:
                self.interested[np.argsort(-pref, kind="stable")[:k]] = True
        self.breaking_published_at: float | None = None

    # ------------------------------------------------------------------ who visits
    def visitors(self, rng: np.random.Generator, n: int, now: float) -> np.ndarray:
        """(n,) user ids ``u<idx>`` drawn in proportion to activity, among users signed up by ``now``."""
        active = np.flatnonzero(self.world.user_signup <= now)
        if not len(active):
            active = np.arange(self.cfg.n_users)
        w = self.world.user_activity[active].astype(np.float64)
        idx = rng.choice(active, size=n, p=w / w.sum())
        return np.asarray([f"u{i}" for i in idx], dtype=object)

    # ------------------------------------------------------------------ breaking news
    def breaking_items(self, now: float) -> list[dict]:
        """The breaking-news item records (``POST /v1/items`` bodies), published at ``now``."""
        b = self.breaking
        self.breaking_published_at = float(now)
        words = ("quake", "storm", "election", "summit", "outage", "rescue")
        return [{"item_id": f"{BREAKING_PREFIX}{k}", "title": f"breaking {words[k % len(words)]} update {k}",
                 "category": self.category, "subcategory": f"{self.category}-live", "creator": b.creator,
                 "published_at": float(now)} for k in range(b.n_items)]

    def is_breaking(self, item_ids) -> np.ndarray:
        """(n,) bool: which ids are breaking-news items."""
        return np.asarray([str(i).startswith(BREAKING_PREFIX) for i in item_ids], dtype=bool)

    # ------------------------------------------------------------------ the click model
    def attractiveness(self, user_id: str, item_ids, now: float) -> np.ndarray:
        """(n,) a(u, i, now) for one user and the shown items (world, breaking or unknown)."""
        ids = [str(i) for i in item_ids]
        u = int(user_id[1:]) if user_id.startswith("u") and user_id[1:].isdigit() else -1
        out = np.full(len(ids), self.breaking.unknown_appeal)
        world_rows = [j for j, i in enumerate(ids) if i.startswith("i") and i[1:].isdigit() and int(i[1:]) < self.cfg.n_items]
        if world_rows and 0 <= u < self.cfg.n_users:
            items = np.asarray([int(ids[j][1:]) for j in world_rows], dtype=np.int64)
            out[world_rows] = self.world.attractiveness(np.full(len(items), u), items, np.full(len(items), float(now)))
        br = [j for j, i in enumerate(ids) if i.startswith(BREAKING_PREFIX)]
        if br:
            keen = 0 <= u < self.cfg.n_users and bool(self.interested[u])
            base = self.breaking.appeal_interested if keen else self.breaking.appeal_other
            age = max(0.0, float(now) - (self.breaking_published_at or float(now)))
            out[br] = base * np.exp(-age / self.cfg.tau_item_s)
        return out

    def feedback(self, rng: np.random.Generator, user_id: str, item_ids, positions, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Clicks (n,) bool by the position-based model and dwell (n,) ms for the clicked ones
        (NaN elsewhere), by the world's dwell model."""
        pos = np.asarray(positions, dtype=np.int64)
        p = self.world.examination(pos) * self.attractiveness(user_id, item_ids, now)
        clicks = rng.random(len(pos)) < p
        log_dwell = np.log(self.cfg.dwell_median_ms) + self.cfg.dwell_sigma * rng.standard_normal(len(pos))
        dwell = np.where(clicks, np.minimum(np.round(np.exp(log_dwell)), self.cfg.dwell_max_ms), np.nan)
        return clicks, dwell
