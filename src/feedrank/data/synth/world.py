"""The synthetic world's parameters and ground truth (users, items, creators, the click model).

``WorldConfig`` holds every knob; ``World.build(cfg)`` draws the world deterministically from
``cfg.seed``; ``World.save(dir)`` / ``World.load(dir)`` store it as ``world.npz`` (arrays)
plus ``world.json`` (config, names, formula constants); no pickle.

The true attractiveness of item i to user u at time t (epoch seconds), in (0, 1):

    pref_u(t)   = (1 - lam(t)) * p0_u + lam(t) * p1_u,   lam(t) = clip((t - start) / (end - start), 0, 1)
    logit       = b0 + w_pref * log(pref_u(t)[cat_i] + pref_floor)
                     + w_aff * <x_u, y_i> + w_quality * q_i
    a(u, i, t)  = sigmoid(logit) * exp(-max(t - published_i, 0) / tau_item)

and the position-based click model: P(click | shown at 0-based position k) =
exam(k) * a(u, i, t) with exam(k) = (1 / (k + 1)) ** eta.

Everything here works on integer indices (user ``u<idx>`` has index idx); ``truth.py``
wraps it with the string-id API used by evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.data.synth.vocab import build_vocab
from feedrank.errors import CorruptFile, NotFound, SchemaError

DAY_S = 86_400.0
HOUR_S = 3_600.0
TRUTH_VERSION = 1
GROUPS: tuple[str, ...] = ("established", "new")


@dataclass(frozen=True)
class WorldConfig:
    """Every parameter of the synthetic world (defaults are the documented ones)."""

    n_users: int = 20_000
    n_items: int = 5_000
    n_days: int = 14
    seed: int = 0
    start: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    feed_len: int = 10
    n_categories: int = 12
    latent_dim: int = 16
    # users
    activity_mean: float = 0.15  # mean sessions per user per day (lognormal across users)
    activity_sigma: float = 1.0
    pref_concentration: float = 0.15  # Dirichlet alpha per topic (scaled by topic popularity): sparse
    signup_during_share: float = 0.15  # users who sign up during the period (cold start)
    # creators and items
    items_per_creator: float = 50.0
    new_creator_share: float = 0.3
    home_category_share: float = 0.85
    backlog_share: float = 0.1  # items published in the max_age window before start
    max_age_hours: float = 96.0  # an item is live while 0 <= age < max_age
    tau_item_hours: float = 48.0  # attractiveness decays as exp(-age / tau_item)
    # attractiveness
    b0: float = 1.5
    w_pref: float = 2.0
    pref_floor: float = 0.01
    w_aff: float = 0.7
    w_quality: float = 0.5
    # click model and feedback
    eta: float = 0.8
    dwell_median_ms: float = 20_000.0
    dwell_w_quality: float = 0.35
    dwell_sigma: float = 0.8
    dwell_max_ms: float = 600_000.0
    hide_max: float = 0.03
    hide_scale: float = 0.05
    # logging policy (mixture weights sum to 1)
    policy_uniform: float = 0.2
    policy_popular: float = 0.4
    policy_category: float = 0.4
    policy_pop_half_life_days: float = 1.0
    policy_cat_smoothing: float = 0.1
    # chunking (changing it changes the random stream, hence the output)
    session_chunk: int = 50_000

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_users", "n_items", "n_days", "feed_len", "n_categories", "latent_dim", "session_chunk"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_categories < 2:
            problems.append(f"n_categories: must be >= 2, got {self.n_categories}")
        if self.activity_mean <= 0:
            problems.append(f"activity_mean: must be > 0, got {self.activity_mean}")
        mix = (self.policy_uniform, self.policy_popular, self.policy_category)
        if min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-9 or self.policy_uniform <= 0:
            problems.append(f"policy mixture {mix}: must be >= 0, sum to 1, uniform share > 0")
        if self.seed < 0:
            problems.append(f"seed: must be >= 0, got {self.seed}")
        if problems:
            raise SchemaError("invalid synthetic world config", problems)

    @property
    def end(self) -> float:
        """End of the period (exclusive), epoch seconds."""
        return self.start + self.n_days * DAY_S

    @property
    def max_age_s(self) -> float:
        return self.max_age_hours * HOUR_S

    @property
    def tau_item_s(self) -> float:
        return self.tau_item_hours * HOUR_S

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    """The world's ground truth as arrays; index i of an array is entity ``<prefix><i>``.

    Shapes: U users, N items (indexed in publish-time order), K creators, C categories, D latent dims.
    """

    config: WorldConfig
    category_names: list[str]
    subcategory_names: list[list[str]]
    cat_vec: np.ndarray  # (C, D) float32 unit category directions
    user_p0: np.ndarray  # (U, C) float32 topic preferences at start
    user_p1: np.ndarray  # (U, C) float32 topic preferences at end
    user_vec: np.ndarray  # (U, D) float32 latent vector x_u
    user_activity: np.ndarray  # (U,) float32 mean sessions/day
    user_signup: np.ndarray  # (U,) float64 epoch seconds
    creator_home: np.ndarray  # (K,) int16 home category
    creator_group: np.ndarray  # (K,) int8 index into GROUPS
    item_cat: np.ndarray  # (N,) int16
    item_sub: np.ndarray  # (N,) int16 subcategory index within its category
    item_creator: np.ndarray  # (N,) int32
    item_pub: np.ndarray  # (N,) float64 epoch seconds, non-decreasing
    item_quality: np.ndarray  # (N,) float32 q_i
    item_vec: np.ndarray  # (N, D) float32 unit latent vector y_i
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ generation
    @classmethod
    def build(cls, cfg: WorldConfig) -> World:
        """Draw a world from ``cfg`` (deterministic in ``cfg.seed``)."""
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        C, D, U, N = cfg.n_categories, cfg.latent_dim, cfg.n_users, cfg.n_items
        names, _, sub_names, _ = build_vocab(C)
        cat_pop = rng.dirichlet(np.full(C, 5.0))  # how popular each topic is overall
        cat_vec = _unit(rng.standard_normal((C, D))).astype(np.float32)
        sub_vec = [_unit(rng.standard_normal((len(s), D))) for s in sub_names]

        # users: sparse Dirichlet preferences that drift from p0 to p1
        alpha = cfg.pref_concentration * C * cat_pop
        p0 = _dirichlet(rng, alpha, U)
        fresh = _dirichlet(rng, alpha, U)
        rho = rng.random(U)[:, None]  # per-user drift strength
        p1 = (1.0 - rho) * p0 + rho * fresh
        user_vec = rng.standard_normal((U, D)).astype(np.float32)
        mu = np.log(cfg.activity_mean) - cfg.activity_sigma**2 / 2
        activity = rng.lognormal(mu, cfg.activity_sigma, U).astype(np.float32)
        during = rng.random(U) < cfg.signup_during_share
        signup = np.where(
            during,
            cfg.start + rng.random(U) * (cfg.end - cfg.start),
            cfg.start - rng.random(U) * 365 * DAY_S,
        )
        signup = np.round(signup)

        # creators: home category, group, productivity, quality offset
        K = max(2, int(round(N / cfg.items_per_creator)))
        creator_home = rng.choice(C, size=K, p=cat_pop).astype(np.int16)
        creator_group = (rng.random(K) < cfg.new_creator_share).astype(np.int8)
        productivity = rng.lognormal(0.0, 1.0, K) * np.where(creator_group == 1, 0.4, 1.0)
        creator_q = rng.normal(0.0, 0.6, K)

        # items, generated unordered then sorted by publish time (index = publish order)
        creator = rng.choice(K, size=N, p=productivity / productivity.sum()).astype(np.int32)
        home = rng.random(N) < cfg.home_category_share
        cat = np.where(home, creator_home[creator], rng.choice(C, size=N, p=cat_pop)).astype(np.int16)
        n_subs = np.array([len(s) for s in sub_names])
        sub = (rng.random(N) * n_subs[cat]).astype(np.int16)
        backlog = rng.random(N) < cfg.backlog_share
        pub = np.where(
            backlog,
            cfg.start - rng.random(N) * cfg.max_age_s,
            cfg.start + rng.random(N) * (cfg.end - cfg.start),
        )
        pub = np.round(pub)  # whole seconds: exact in ms and in the policy's integer keys
        quality = (creator_q[creator] + rng.normal(0.0, 0.8, N)).astype(np.float32)
        max_sub = max(len(s) for s in sub_names)
        sub_pad = np.zeros((C, max_sub, D))
        for c, vecs in enumerate(sub_vec):
            sub_pad[c, : len(vecs)] = vecs
        noise = rng.standard_normal((N, D)) / np.sqrt(D)  # norm ~ 1
        item_vec = _unit(cat_vec[cat] + 0.6 * sub_pad[cat, sub] + 0.8 * noise)
        order = np.argsort(pub, kind="stable")
        return cls(
            config=cfg,
            category_names=names,
            subcategory_names=sub_names,
            cat_vec=cat_vec,
            user_p0=p0.astype(np.float32),
            user_p1=p1.astype(np.float32),
            user_vec=user_vec,
            user_activity=activity,
            user_signup=signup,
            creator_home=creator_home,
            creator_group=creator_group,
            item_cat=cat[order],
            item_sub=sub[order],
            item_creator=creator[order],
            item_pub=pub[order],
            item_quality=quality[order],
            item_vec=item_vec[order].astype(np.float32),
            extra={"category_popularity": cat_pop.tolist()},
        )

    # ------------------------------------------------------------------ the model
    def prefs_at(self, u: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Topic preferences pref_u(t). Returns: (len(u), C) float32, rows sum to 1."""
        cfg = self.config
        lam = np.clip((np.asarray(ts, dtype=np.float64) - cfg.start) / (cfg.end - cfg.start), 0.0, 1.0)
        lam = lam.astype(np.float32)[:, None]
        return (1.0 - lam) * self.user_p0[u] + lam * self.user_p1[u]

    def pref_for(self, u: np.ndarray, c: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """pref_u(t)[c] for aligned arrays. Returns: (len(u),) float64."""
        cfg = self.config
        lam = np.clip((np.asarray(ts, dtype=np.float64) - cfg.start) / (cfg.end - cfg.start), 0.0, 1.0)
        return (1.0 - lam) * self.user_p0[u, c] + lam * self.user_p1[u, c]

    def attractiveness(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """a(u, i, t) for aligned index arrays (see module docstring). Returns: (n,) float64 in (0, 1)."""
        cfg = self.config
        ts = np.asarray(ts, dtype=np.float64)
        pref = self.pref_for(u, self.item_cat[i], ts)
        aff = np.einsum("nd,nd->n", self.user_vec[u], self.item_vec[i], dtype=np.float32)
        logit = cfg.b0 + cfg.w_pref * np.log(pref + cfg.pref_floor) + cfg.w_aff * aff + cfg.w_quality * self.item_quality[i]
        age = np.maximum(ts - self.item_pub[i], 0.0)
        return _sigmoid(logit.astype(np.float64)) * np.exp(-age / cfg.tau_item_s)

    def examination(self, position: np.ndarray | int) -> np.ndarray:
        """exam(k) = (1 / (k + 1)) ** eta for 0-based positions. Returns: float64 like ``position``."""
        pos = np.asarray(position, dtype=np.float64)
        if np.any(pos < 0):
            raise SchemaError("examination: positions must be >= 0")
        return (1.0 / (pos + 1.0)) ** self.config.eta

    def click_probability(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """P(click) = exam(pos) * a(u, i, t). Returns: (n,) float64."""
        return self.examination(pos) * self.attractiveness(u, i, ts)

    # ------------------------------------------------------------------ storage
    _ARRAYS = (
        "cat_vec", "user_p0", "user_p1", "user_vec", "user_activity", "user_signup", "creator_home",
        "creator_group", "item_cat", "item_sub", "item_creator", "item_pub", "item_quality", "item_vec",
    )

    def save(self, truth_dir: str | Path) -> None:
        """Write ``world.npz`` and ``world.json`` into ``truth_dir`` (created)."""
        out = Path(truth_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "world.npz", **{name: getattr(self, name) for name in self._ARRAYS})
        cfg = self.config
        meta = {
            "truth_version": TRUTH_VERSION,
            "config": asdict(cfg),
            "category_names": self.category_names,
            "subcategory_names": self.subcategory_names,
            "creator_groups": list(GROUPS),
            "counts": {"users": cfg.n_users, "items": cfg.n_items, "creators": int(len(self.creator_home))},
            "period": {"start": cfg.start, "end": cfg.end},
            "formulas": {
                "pref": "pref_u(t) = (1-lam) p0_u + lam p1_u, lam = clip((t-start)/(end-start), 0, 1)",
                "attractiveness": "sigmoid(b0 + w_pref*log(pref_u(t)[cat_i] + pref_floor) + w_aff*<x_u,y_i> "
                "+ w_quality*q_i) * exp(-max(t - published_i, 0) / tau_item)",
                "examination": "(1/(pos+1))**eta, pos 0-based",
                "click": "exam(pos) * a(u,i,t)",
                "propensity": "P(item at slot | items at earlier slots) under the logging policy",
            },
            "extra": self.extra,
        }
        (out / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, truth_dir: str | Path) -> World:
        """Read a world written by ``save``."""
        root = Path(truth_dir)
        jpath, npath = root / "world.json", root / "world.npz"
        if not jpath.exists() or not npath.exists():
            raise NotFound(f"{root}: no synthetic-world truth here (need world.json and world.npz)")
        try:
            meta = json.loads(jpath.read_text())
            with np.load(npath, allow_pickle=False) as z:
                arrays = {name: z[name] for name in cls._ARRAYS}
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise CorruptFile(f"{root}: unreadable world truth: {exc}") from exc
        if meta.get("truth_version") != TRUTH_VERSION:
            raise SchemaError(f"{jpath}: truth_version {meta.get('truth_version')!r}, expected {TRUTH_VERSION}")
        return cls(
            config=WorldConfig.from_dict(meta["config"]),
            category_names=list(meta["category_names"]),
            subcategory_names=[list(s) for s in meta["subcategory_names"]],
            extra=dict(meta.get("extra", {})),
            **arrays,
        )


def _dirichlet(rng: np.random.Generator, alpha: np.ndarray, n: int) -> np.ndarray:
    """(n, C) Dirichlet(alpha) rows, vectorised via normalised Gamma draws (safe for tiny alpha)."""
    g = rng.standard_gamma(alpha, size=(n, len(alpha)))
    s = g.sum(axis=1, keepdims=True)
    empty = s[:, 0] <= 0
    if np.any(empty):  # all-zero rows from underflow: put the mass on one topic
        g[empty, rng.choice(len(alpha), size=int(empty.sum()), p=alpha / alpha.sum())] = 1.0
        s = g.sum(axis=1, keepdims=True)
    return g / s
