"""A/B experiments: a reloadable YAML file, deterministic assignment, per-arm serving.

    experiments:
      - name: fresh-feed
        salt: fr-2026-11            # change it to reshuffle users
        traffic: 0.5                # share of all users in this experiment
        arms:
          - {name: control, weight: 0.5}
          - name: fresher
            weight: 0.5
            settings: {rerank.mmr_lambda: 0.7, pipeline.fresh_k: 100}
            model_version: 3        # optional: a registry version (serve --registry)

Users are first split across experiments by one hash of their id (experiments never
overlap; users outside every experiment get the default service, arm null). Inside an
experiment the arm is chosen by ``sha256(salt:user_id)`` against the cumulative weights.
Both are deterministic, so a user keeps their arm across requests, replicas and restarts.
Arms may change runtime settings (the `pipeline`, `rerank` and the serving-time `ranking`
keys) and/or pin a model version. The arm is in every response and every logged impression
(``"<experiment>/<arm>"``), and ``feedrank ab report`` reads it back from the event log.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from feedrank.errors import SchemaError
from feedrank.serving.heap import freeze_loaded
from feedrank.types import Event, FeedRequest, FeedResponse, Item

log = logging.getLogger(__name__)
RUNTIME_SECTIONS = ("pipeline", "rerank")
RUNTIME_RANKING_KEYS = ("click_weight", "dwell_weight", "freshness_tau_hours")
LAYER_SALT = "feedrank-experiment-layer"


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    settings: tuple[tuple[str, Any], ...] = ()
    model_version: int | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    traffic: float
    arms: tuple[Arm, ...]


def unit_hash(text: str) -> float:
    """A stable value in [0, 1) from a string (the top 52 bits of its SHA-256)."""
    return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 12) / float(1 << 52)


def _check_setting(key: str) -> str | None:
    parts = key.split(".")
    if len(parts) != 2:
        return f"setting {key!r}: expected SECTION.KEY"
    if parts[0] in RUNTIME_SECTIONS or (parts[0] == "ranking" and parts[1] in RUNTIME_RANKING_KEYS):
        return None
    return (f"setting {key!r}: only runtime settings can differ per arm ({', '.join(s + '.*' for s in RUNTIME_SECTIONS)}, "
            f"{', '.join('ranking.' + k for k in RUNTIME_RANKING_KEYS)}); other changes need their own model_version")


def _setting_type_problems(where: str, settings: dict[str, Any]) -> list[str]:
    """Type and range problems of arm settings, checked against the config schema."""
    from feedrank.config import FeedrankConfig, config_from_dict, config_to_dict
    from feedrank.errors import ConfigError

    raw = config_to_dict(FeedrankConfig())
    for key, value in settings.items():
        section, name = str(key).split(".", 1)
        raw[section][name] = value
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        return [f"{where}.settings: {p}" for p in exc.problems]
    return []


def parse_experiments(raw: Any, where: str = "experiments") -> tuple[Experiment, ...]:
    """Validate the file's content; SchemaError lists every problem."""
    problems: list[str] = []
    if raw is None:
        return ()
    if not isinstance(raw, dict) or set(raw) - {"experiments"}:
        raise SchemaError(f"{where}: top level must be a mapping with one key 'experiments'")
    items = raw.get("experiments") or []
    if not isinstance(items, list):
        raise SchemaError(f"{where}: 'experiments' must be a list")
    out: list[Experiment] = []
    names: set[str] = set()
    total_traffic = 0.0
    for e_i, e in enumerate(items):
        at = f"experiments[{e_i}]"
        if not isinstance(e, dict):
            problems.append(f"{at}: expected a mapping")
            continue
        unknown = set(e) - {"name", "salt", "traffic", "arms"}
        problems += [f"{at}.{k}: unknown key" for k in sorted(unknown)]
        name = e.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            problems.append(f"{at}.name: a non-empty string without '/' is required")
            name = f"#{e_i}"
        elif name in names:
            problems.append(f"{at}.name: duplicate experiment {name!r}")
        names.add(name)
        salt = e.get("salt", name)
        traffic = e.get("traffic", 1.0)
        if not isinstance(traffic, (int, float)) or isinstance(traffic, bool) or not 0 < traffic <= 1:
            problems.append(f"{at}.traffic: a number in (0, 1] is required")
            traffic = 0.0
        total_traffic += float(traffic)
        arms: list[Arm] = []
        arm_names: set[str] = set()
        raw_arms = e.get("arms")
        if not isinstance(raw_arms, list) or len(raw_arms) < 2:
            problems.append(f"{at}.arms: at least two arms are required")
            raw_arms = []
        for a_i, a in enumerate(raw_arms):
            aat = f"{at}.arms[{a_i}]"
            if not isinstance(a, dict):
                problems.append(f"{aat}: expected a mapping")
                continue
            problems += [f"{aat}.{k}: unknown key" for k in sorted(set(a) - {"name", "weight", "settings", "model_version"})]
            aname = a.get("name")
            if not isinstance(aname, str) or not aname or "/" in aname:
                problems.append(f"{aat}.name: a non-empty string without '/' is required")
                aname = f"#{a_i}"
            elif aname in arm_names:
                problems.append(f"{aat}.name: duplicate arm {aname!r}")
            arm_names.add(aname)
            w = a.get("weight")
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
                problems.append(f"{aat}.weight: a number > 0 is required")
                w = 0.0
            settings = a.get("settings") or {}
            if not isinstance(settings, dict):
                problems.append(f"{aat}.settings: expected a mapping of SECTION.KEY: value")
                settings = {}
            for key in settings:
                msg = _check_setting(str(key))
                if msg:
                    problems.append(f"{aat}.{msg}")
            mv = a.get("model_version")
            if mv is not None and (isinstance(mv, bool) or not isinstance(mv, int) or mv < 1):
                problems.append(f"{aat}.model_version: a registry version number (int >= 1) or absent")
                mv = None
            valid = {k: v for k, v in settings.items() if _check_setting(str(k)) is None}
            if valid:
                problems += _setting_type_problems(aat, valid)
            arms.append(Arm(aname, float(w), tuple(sorted(settings.items())), mv))
        wsum = sum(a.weight for a in arms)
        if arms and abs(wsum - 1.0) > 1e-6:
            problems.append(f"{at}.arms: weights must sum to 1, got {wsum:g}")
        out.append(Experiment(name, str(salt), float(traffic), tuple(arms)))
    if total_traffic > 1.0 + 1e-9:
        problems.append(f"experiments: traffic shares sum to {total_traffic:g} > 1 (experiments must not overlap)")
    if problems:
        raise SchemaError(f"{where}: invalid experiments", problems)
    return tuple(out)


def assign(experiments: Sequence[Experiment], user_id: str) -> tuple[Experiment, Arm] | None:
    """The (experiment, arm) of a user, or None when the user is in no experiment."""
    u = unit_hash(f"{LAYER_SALT}:{user_id}")
    edge = 0.0
    for exp in experiments:
        edge += exp.traffic
        if u < edge:
            v = unit_hash(f"{exp.salt}:{user_id}")
            acc = 0.0
            for arm in exp.arms:
                acc += arm.weight
                if v < acc:
                    return exp, arm
            return exp, exp.arms[-1]
    return None


def _parse_file(raw: Any) -> tuple[Experiment, ...]:
    return parse_experiments(raw)


class ExperimentRouter:
    """A FeedService that assigns each request's user to an arm and serves it there.

    ``base`` is the default service (a Recommender, or a ModelManager following the
    registry; its ``active`` Recommender is used for settings views). ``load_version``
    builds a Recommender for a registry version (arms with ``model_version``); it is None
    when serving a single bundle, and such arms are then refused at reload time.
    Views are cached per (experiment, arm, base model version)."""

    def __init__(self, base: Any, experiments_file: str | Path, load_version: Callable[[int], Any] | None = None) -> None:
        from feedrank.pipeline.policy_source import ReloadableFile

        self.base = base
        self.load_version = load_version
        self.source = ReloadableFile(experiments_file, _parse_file, (), "experiments file")
        self._views: dict[tuple[str, str, str], Any] = {}
        self._pinned: dict[int, Any] = {}
        self._added: list[dict] = []  # every item added (published_at filled), replayed onto new pins
        self._lock = threading.Lock()
        self.view_errors = 0

    # -------------------------------------------------------------- routing
    def pinned_models(self) -> list[Any]:
        """The model versions experiment arms pin, loaded so far. No lock: the event loop's
        probe calls it, and a pinned version loads under the lock (one C-level copy is atomic)."""
        return list(self._pinned.values())

    def _base_recommender(self) -> Any:
        return getattr(self.base, "active", self.base)

    def _service_for(self, exp: Experiment, arm: Arm) -> Any | None:
        base = self._base_recommender()
        key = (exp.name, arm.name, base.model_version)
        view = self._views.get(key)
        if view is not None:
            return view
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                return view
            # views of a swapped-out version would keep that whole model alive: drop them
            stale = [k for k in self._views if k[2] != base.model_version]
            for k in stale:
                del self._views[k]
            try:
                target = base
                if arm.model_version is not None:
                    if self.load_version is None:
                        raise SchemaError(f"arm {exp.name}/{arm.name} pins model_version {arm.model_version}, "
                                          "but the server runs a single bundle (use `feedrank serve --registry`)")
                    if arm.model_version not in self._pinned:
                        pinned = self.load_version(arm.model_version)
                        if self._added:  # items added since start: a pinned version serves them too
                            pinned.add_items(list(self._added))
                        self._pinned[arm.model_version] = pinned
                        freeze_loaded(f"pinned model version {arm.model_version}")
                    target = self._pinned[arm.model_version]
                view = target.with_settings(arm.settings) if arm.settings else target
            except Exception:
                self.view_errors += 1
                log.exception("experiment arm %s/%s cannot be served; its users get the default (arm null)", exp.name, arm.name)
                return None
            self._views[key] = view
            return view

    def assignment(self, user_id: str) -> tuple[Experiment, Arm] | None:
        return assign(self.source.current(), user_id)

    # -------------------------------------------------------------- FeedService
    @property
    def model_version(self) -> str:
        return self.base.model_version

    def recommend(self, request: FeedRequest) -> FeedResponse:
        hit = self.assignment(request.user_id)
        if hit is None:
            return self.base.recommend(request)
        exp, arm = hit
        service = self._service_for(exp, arm)
        if service is None:
            return self.base.recommend(request)
        return replace(service.recommend(request), arm=f"{exp.name}/{arm.name}")

    def observe(self, events: Sequence[Event]) -> None:
        self.base.observe(events)
        for rec in list(self._pinned.values()):  # pinned versions keep their own online state
            rec.observe(events)

    def add_items(self, records: list[dict], now: float | None = None) -> dict:
        """Items go to the base service and every pinned version; settings views are
        rebuilt from the updated base on their next request (a view holds its own
        reference to the catalogue it was made from)."""
        now = time.time() if now is None else float(now)
        records = [dict(r, published_at=now if r.get("published_at") is None else r["published_at"]) for r in records]
        with self._lock:
            out = self.base.add_items(records, now)
            for rec in list(self._pinned.values()):
                rec.add_items(records, now)
            self._added.extend(records)
            self._views.clear()
        return out

    def has_item(self, item_id: str) -> bool:
        return self.base.has_item(item_id)

    def seen_items(self, user_id: str, now: float | None = None) -> tuple[str, ...]:
        """What the base model's state remembers showing the user (every arm's feeds are
        observed there, and settings views share it)."""
        return self.base.seen_items(user_id, now)

    def get_item(self, item_id: str) -> Item | None:
        return self.base.get_item(item_id)

    def stage_names(self) -> tuple[str, ...]:
        return self.base.stage_names()

    def ready(self) -> bool:
        ready = getattr(self.base, "ready", None)
        return ready() if callable(ready) else True
