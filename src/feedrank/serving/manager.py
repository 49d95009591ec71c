"""Hot swap: serve the registry's ``current`` version and switch without stopping.

The manager is the FeedService the app sees. A poller thread reads the registry's
``current`` pointer every ``poll_s`` seconds; on a change it loads the new bundle *beside*
the old one, builds its Recommender (which warms up), runs a few real requests through it,
and only then swaps one reference. A bundle that fails to load or to warm up is refused:
the old model keeps serving, the failure is logged and counted in /metrics
(``feedrank_model_swaps_total{result="failed"}``), and that version is not retried until
``current`` changes again.

Note: the online state (recent clicks, seen items) starts from the new bundle's snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from feedrank.errors import ModelLoadError
from feedrank.pipeline.recommender import Recommender
from feedrank.registry.store import ModelRegistry
from feedrank.serving.heap import freeze_loaded
from feedrank.types import Event, FeedRequest, FeedResponse, Item

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapResult:
    changed: bool
    version: int | None
    result: str          # "swapped" | "unchanged" | "failed" | "skipped"
    detail: str = ""


class ModelManager:
    """A FeedService that delegates to the current Recommender and hot-swaps it."""

    def __init__(self, registry: ModelRegistry, build: Callable[[Path], Recommender], poll_s: float = 5.0,
                 metrics_registry: CollectorRegistry | None = None, warm_users: int = 8) -> None:
        self.registry = registry
        self.build = build
        self.poll_s = poll_s
        self.warm_users = warm_users
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_version: int | None = None
        # POST /v1/items records by item id (the newest of each), replayed into every later version
        self._added_items: dict[str, dict] = {}
        self.registry_version: int | None = None
        self.swaps = Counter("feedrank_model_swaps", "Model hot swaps by result", ["result"], registry=metrics_registry)
        self.version_gauge = Gauge("feedrank_model_registry_version", "Registry version being served", registry=metrics_registry)
        version = registry.current()
        if version is None:
            raise ModelLoadError(f"registry {registry.root} has no current version; run `feedrank models promote N`")
        self._active: Recommender = self._load(version)  # the first load must succeed
        self._set_version(version)

    # ------------------------------------------------------------------ swapping
    def _load(self, version: int) -> Recommender:
        rec = self.build(self.registry.path(version))
        snap_users = rec.art.snapshot.user_ids[: self.warm_users].tolist() + ["__warm_new_user__"]
        for u in snap_users:  # real requests through every stage before any traffic
            resp = rec.recommend(FeedRequest(user_id=str(u), k=10, deadline_ms=10_000.0))
            if not resp.items:
                raise ModelLoadError(f"version {version}: warm-up returned an empty feed for {u!r}")
        return rec

    def _set_version(self, version: int) -> None:
        self.registry_version = version
        self.version_gauge.set(version)

    def check_now(self) -> SwapResult:
        """Compare ``current`` with what is served; load and swap if it changed."""
        try:
            version = self.registry.current()
        except Exception as exc:  # a torn or unreadable pointer: keep serving
            log.exception("cannot read the registry's current pointer")
            return SwapResult(False, None, "failed", str(exc))
        if version is None or version == self.registry_version:
            return SwapResult(False, version, "unchanged")
        if version == self._failed_version:
            return SwapResult(False, version, "skipped", "this version failed to load before")
        t0 = time.perf_counter()
        try:
            new = self._load(version)
            self._replay_items(new)
        except Exception as exc:
            self._failed_version = version
            self.swaps.labels(result="failed").inc()
            log.exception("model version %s refused; still serving %s", version, self.model_version)
            return SwapResult(False, version, "failed", f"{type(exc).__name__}: {exc}")
        with self._lock:
            old, self._active = self._active, new
            self._set_version(version)
        try:  # items added to the old model while the new one was replayed and swapped in
            self._replay_items(new)
        except Exception:
            log.exception("could not add the live items added during the swap to version %s", version)
        self._failed_version = None
        self.swaps.labels(result="ok").inc()
        log.info("swapped model %s -> %s (registry version %s) in %.1fs", old.model_version, new.model_version, version,
                 time.perf_counter() - t0)
        del old  # its reference cycles are collected by the freeze, not kept frozen
        freeze_loaded(f"swap to version {version}")
        return SwapResult(True, version, "swapped")

    def start(self) -> ModelManager:
        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.check_now()

        self._thread = threading.Thread(target=loop, name="model-manager", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 5)

    # ------------------------------------------------------------------ FeedService
    @property
    def active(self) -> Recommender:
        return self._active

    @property
    def model_version(self) -> str:
        return self._active.model_version

    def recommend(self, request: FeedRequest) -> FeedResponse:
        return self._active.recommend(request)

    def observe(self, events: Sequence[Event]) -> None:
        self._active.observe(events)

    def has_item(self, item_id: str) -> bool:
        return self._active.has_item(item_id)

    def seen_items(self, user_id: str, now: float | None = None) -> tuple[str, ...]:
        return self._active.seen_items(user_id, now)

    def add_items(self, records: list[dict], now: float | None = None) -> dict:
        """Add items to the serving model (``POST /v1/items``). The newest record of each
        item id is remembered and added again to every version swapped in later: a bundle
        trained before an item arrived lacks it, and one trained before an update has the
        old record (``add_items`` replaces an existing id, so replaying is idempotent)."""
        with self._lock:
            for r in records:
                key = str(r["item_id"])
                self._added_items.pop(key, None)  # re-insert: replay order = arrival order of the newest records
                self._added_items[key] = r
        return self._active.add_items(records, now)

    def _replay_items(self, rec: Recommender) -> None:
        now = time.time()
        with self._lock:
            pending = list(self._added_items.values())
        # an expired item the new version lacks is not worth a row; one it has with other fields
        # is added again (a new row); one that differs only in its expiry gets it in place
        # (bundles do not keep expiries: re-adding would reset its counters at every swap)
        have = {str(r["item_id"]): rec.get_item(str(r["item_id"])) for r in pending}
        records = [r for r in pending if _differs(have[str(r["item_id"])], r)
                   and not (have[str(r["item_id"])] is None and _expired(r, now))]
        changed = {str(r["item_id"]) for r in records}
        expiries = {str(r["item_id"]): r.get("expires_at") for r in pending
                    if str(r["item_id"]) not in changed and _expiry_differs(rec, r)}
        if records:
            rec.add_items(records)
            log.info("added %d live items the new version lacked or had an older record of", len(records))
        if expiries:
            n = rec.set_expiry(expiries)
            if n:
                log.info("moved the expiry of %d posted items in place", n)

    def get_item(self, item_id: str) -> Item | None:
        return self._active.get_item(item_id)

    def stage_names(self) -> tuple[str, ...]:
        return self._active.stage_names()

    def ready(self) -> bool:
        return self._active is not None


def _expired(record: dict, now: float) -> bool:
    exp = record.get("expires_at")
    return exp is not None and float(exp) <= now


def _expiry_differs(rec: Recommender, record: dict) -> bool:
    """Whether the model serves ``record``'s item with another expiry than the record's
    (``expires_at``; none = never): an update that only set or moved the expiry must reach a
    version swapped in later too."""
    idx = rec.catalog.index.get(str(record["item_id"]))
    if idx is None:
        return True
    want = record.get("expires_at")
    want = float("inf") if want is None else float(want)
    have = float(rec.live_catalog.expires_at[idx])
    return not (want == have or abs(want - have) <= 1e-3)


def _differs(item: Item | None, record: dict) -> bool:
    """Whether ``record`` (a POSTed item) is missing from a model or differs from its copy
    there: only those are added again (re-adding an unchanged item would move it to a new
    row and restart its counters)."""
    if item is None:
        return True
    for field in ("title", "category", "subcategory", "creator"):
        if field in record and record[field] is not None and str(record[field]) != str(getattr(item, field)):
            return True
    pub = record.get("published_at")
    return pub is not None and item.published_at is not None and abs(float(pub) - float(item.published_at)) > 1e-3
