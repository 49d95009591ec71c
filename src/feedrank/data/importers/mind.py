"""MIND (Microsoft News Dataset) -> canonical dataset.

Reads ``behaviors.tsv`` and ``news.tsv`` from one MIND split folder (tab-separated, no
header, no quoting: titles contain quotes) and writes:

- one ``impression`` event per shown item: ``position`` = 0-based order in the impression
  list, ``request_id = "mind-<impression_id>"``, propensity null (MIND logs none);
- one ``click`` event per clicked shown item (label 1): same request id and position,
  ``ts`` = impression time + 1 s;
- one ``click`` event per (user, history item), no position / request id, deduplicated
  per user (the history repeats in each of a user's rows and may list an item twice),
  timestamped before the user's earliest impression: the last history item at
  ``t0 - 1 s``, each earlier one ``HISTORY_STEP_S`` before the next, so order is kept;
- ``items.parquet`` with every item any event references plus every news.tsv item
  (metadata from news.tsv when present, else title "" and category "unknown");
  ``published_at`` = the first time the item appears in any event (an estimate);
- ``users.parquet`` with every user id.

Times (``%m/%d/%Y %I:%M:%S %p``) are read as UTC. Event ids are deterministic:
``mind-<imp>-<pos>-imp``, ``mind-<imp>-<pos>-clk``, ``mind-h-<user>-<item>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feedrank.data.dataset import DatasetWriter
from feedrank.data.importers import (
    Problems,
    check_not_empty,
    iter_line_chunks,
    join_str,
    require_file,
    split_fields,
    split_tokens,
)
from feedrank.data.schema import DatasetMeta

BEHAVIORS_FILE = "behaviors.tsv"
NEWS_FILE = "news.tsv"
BEHAVIORS_FIELDS = ("impression_id", "user_id", "time", "history", "impressions")
NEWS_FIELDS = (
    "news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities",
)
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
CLICK_DELAY_S = 1.0
HISTORY_GAP_S = 1.0
HISTORY_STEP_S = 0.001
HISTORY_ORDER_BASE = 1 << 24  # history lists are far shorter than 16M ids
CHUNK_LINES = 20_000
EVENT_CHUNK_ROWS = 1_000_000


def _events(
    event_id: pa.Array, ts: np.ndarray, user: pa.Array, item: pa.Array, kind: str,
    position: np.ndarray | None = None, request_id: pa.Array | None = None,
) -> dict:
    """Columns of one block of canonical events (``ts`` float seconds, shape (N,))."""
    n = len(event_id)
    return {
        "event_id": event_id,
        "ts": ts,
        "user_id": user,
        "item_id": item,
        "kind": pa.repeat(pa.scalar(kind, type=pa.string()), n),
        "position": pa.nulls(n, pa.int32()) if position is None else pa.array(position.astype(np.int32)),
        "request_id": pa.nulls(n, pa.string()) if request_id is None else request_id,
        "propensity": pa.nulls(n, pa.float64()),
        "dwell_ms": pa.nulls(n, pa.float64()),
    }


def _min_merge(state: pa.Table | None, new: pa.Table, keys: list[str], value: str) -> pa.Table:
    """Minimum ``value`` per ``keys`` over ``state`` and ``new`` (Arrow hash aggregation)."""
    both = new if state is None else pa.concat_tables([state, new])
    agg = both.group_by(keys, use_threads=True).aggregate([(value, "min")])
    return agg.rename_columns([value if c == f"{value}_min" else c for c in agg.column_names]).select([*keys, value])


class _BehaviorsReader:
    """One pass over behaviors.tsv: validates, writes impression/click events, and keeps
    the small per-user / per-item state the history events and items need."""

    def __init__(self, writer: DatasetWriter, problems: Problems) -> None:
        self.writer = writer
        self.problems = problems
        self.user_first: pa.Table | None = None  # user_id, ts: earliest impression
        self.item_first: pa.Table | None = None  # item_id, ts: earliest impression
        self.history_parts: list[pa.Table] = []  # user_id, item_id, order (file order)
        self.history_seen = np.zeros(0, dtype=np.uint64)  # hashes of (user, history) rows read
        self.history: pa.Table | None = None     # deduplicated by finish()
        self.imp_hashes: list[np.ndarray] = []
        self.imp_lines: list[np.ndarray] = []
        self.n_impressions = 0
        self.n_shown = 0
        self.n_clicks = 0

    def chunk(self, cols: dict[str, pa.Array], line_no: np.ndarray) -> None:
        fname, probs = BEHAVIORS_FILE, self.problems
        bad = check_not_empty(cols["impression_id"], "impression_id", line_no, fname, probs)
        bad |= check_not_empty(cols["user_id"], "user_id", line_no, fname, probs)
        ts_arr = pc.strptime(pc.utf8_trim_whitespace(cols["time"]), format=TIME_FORMAT, unit="s", error_is_null=True)
        bad_ts = np.asarray(pc.is_null(ts_arr))
        for i in np.flatnonzero(bad_ts):
            probs.add(f"{fname}: line {line_no[i]}, field 'time': {cols['time'][int(i)].as_py()!r} does not match {TIME_FORMAT!r}")
        ts = np.asarray(pc.fill_null(pc.cast(ts_arr, pa.int64()), 0)).astype(np.float64)
        self.imp_hashes.append(pd.util.hash_array(cols["impression_id"].to_numpy(zero_copy_only=False)))
        self.imp_lines.append(line_no)
        self.n_impressions += len(line_no)

        tokens, parent, pos = split_tokens(cols["impressions"])
        empty = np.bincount(parent, minlength=len(line_no)) == 0
        for i in np.flatnonzero(empty):
            probs.add(f"{fname}: line {line_no[i]}, field 'impressions': empty (no NEWSID-LABEL tokens)")
        parts = pc.split_pattern(tokens, pattern="-", max_splits=1, reverse=True)
        two = np.asarray(pc.equal(pc.list_value_length(parts), 2))
        if not two.all():  # report tokens without '-', check the others' labels
            for t in np.flatnonzero(~two):
                probs.add(f"{fname}: line {line_no[parent[t]]}, field 'impressions': token {int(pos[t])} "
                          f"{tokens[int(t)].as_py()!r} is not NEWSID-LABEL")
            keep = pa.array(two)
            parts, tokens, parent, pos = parts.filter(keep), tokens.filter(keep), parent[two], pos[two]
        item, label = pc.list_element(parts, 0), pc.list_element(parts, 1)
        bad_tok = np.asarray(pc.equal(pc.utf8_length(item), 0))
        bad_label = ~bad_tok & ~np.asarray(pc.is_in(label, value_set=pa.array(["0", "1"])))
        for t in np.flatnonzero(bad_tok):
            probs.add(f"{fname}: line {line_no[parent[t]]}, field 'impressions': token {int(pos[t])} "
                      f"{tokens[int(t)].as_py()!r} is not NEWSID-LABEL")
        for t in np.flatnonzero(bad_label):
            probs.add(f"{fname}: line {line_no[parent[t]]}, field 'impressions': token {int(pos[t])} "
                      f"{tokens[int(t)].as_py()!r} has label {label[int(t)].as_py()!r}, expected 0 or 1")
        if not two.all():
            return
        bad |= bad_ts | empty
        if self.problems or bad.any() or bad_tok.any() or bad_label.any():
            return  # keep validating the rest of the file, write nothing more

        imp_id, user = cols["impression_id"], cols["user_id"]
        parent_idx = pa.array(parent)
        t_imp = ts[parent]
        u_imp = user.take(parent_idx)
        rid = join_str("mind-", imp_id.take(parent_idx))
        stem = join_str(rid, "-", pos)
        self.writer.append_events(_events(join_str(stem, "-imp"), t_imp, u_imp, item, "impression", pos, rid))
        clicked = np.asarray(pc.equal(label, "1"))
        cmask = pa.array(clicked)
        self.writer.append_events(_events(
            join_str(stem.filter(cmask), "-clk"), t_imp[clicked] + CLICK_DELAY_S, u_imp.filter(cmask),
            item.filter(cmask), "click", pos[clicked], rid.filter(cmask),
        ))
        self.n_shown += len(item)
        self.n_clicks += int(clicked.sum())

        self.user_first = _min_merge(self.user_first, pa.table({"user_id": user, "ts": ts}), ["user_id"], "ts")
        self.item_first = _min_merge(self.item_first, pa.table({"item_id": item, "ts": t_imp}), ["item_id"], "ts")
        # A user's history repeats on each of their rows: explode each distinct
        # (user, history) row once; deduplicate (user, item) pairs in finish().
        row_hash = pd.util.hash_array(join_str(user, "\t", cols["history"]).to_numpy(zero_copy_only=False))
        _, first = np.unique(row_hash, return_index=True)
        rows = np.sort(first[~np.isin(row_hash[first], self.history_seen)])
        self.history_seen = np.union1d(self.history_seen, row_hash[rows])
        h_tok, h_parent, h_k = split_tokens(cols["history"].take(pa.array(rows)))
        h_rows = rows[h_parent]
        order = line_no[h_rows] * HISTORY_ORDER_BASE + h_k  # file order: line, then index in line
        self.history_parts.append(pa.table({"user_id": user.take(pa.array(h_rows)), "item_id": h_tok, "order": order}))

    def finish(self) -> None:
        """Deduplicate history clicks per (user, item), keeping the first sighting."""
        if self.history_parts:
            parts, self.history_parts = self.history_parts, []
            self.history = _min_merge(None, pa.concat_tables(parts), ["user_id", "item_id"], "order")

    def check_duplicate_ids(self) -> None:
        """Report impression ids that occur on more than one line."""
        if not self.imp_hashes:
            return
        h = np.concatenate(self.imp_hashes)
        lines = np.concatenate(self.imp_lines)
        uniq, first, counts = np.unique(h, return_index=True, return_counts=True)
        if (counts == 1).all():
            return
        first_line = dict(zip(uniq[counts > 1].tolist(), lines[first[counts > 1]].tolist()))
        for i in np.flatnonzero(np.isin(h, uniq[counts > 1])):
            fl = first_line[int(h[i])]
            if lines[i] != fl:
                self.problems.add(f"{BEHAVIORS_FILE}: line {lines[i]}, field 'impression_id': duplicate "
                                  f"impression id (first at line {fl})")


def _read_news(path: Path, problems: Problems) -> pd.DataFrame:
    """news.tsv -> DataFrame(item_id, title, category, subcategory, abstract)."""
    frames = []
    for chunk in iter_line_chunks(path, chunk_lines=CHUNK_LINES, problems=problems):
        cols, line_no = split_fields(chunk, "\t", NEWS_FIELDS, NEWS_FILE, problems)
        check_not_empty(cols["news_id"], "news_id", line_no, NEWS_FILE, problems)
        frames.append(pd.DataFrame({
            "item_id": pc.utf8_trim_whitespace(cols["news_id"]).to_numpy(zero_copy_only=False),
            "title": cols["title"].to_numpy(zero_copy_only=False),
            "category": cols["category"].to_numpy(zero_copy_only=False),
            "subcategory": cols["subcategory"].to_numpy(zero_copy_only=False),
            "abstract": cols["abstract"].to_numpy(zero_copy_only=False),
            "line": line_no,
        }))
    news = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {c: [] for c in ("item_id", "title", "category", "subcategory", "abstract", "line")})
    dup = news.duplicated("item_id", keep="first")
    for _, row in news[dup].iterrows():
        problems.add(f"{NEWS_FILE}: line {row['line']}, field 'news_id': duplicate news id {row['item_id']!r}")
    for col in ("category", "subcategory"):
        news[col] = news[col].where(news[col].str.strip() != "", "unknown")
    return news.drop(columns="line")


def _history_events(writer: DatasetWriter, history: pa.Table | None, user_first: pa.Table) -> pa.Table | None:
    """Write the history clicks (timestamps estimated from each user's first impression).

    Returns their per-item earliest time (item_id, ts), or None without history.
    """
    if history is None or history.num_rows == 0:
        return None
    h = history.sort_by([("user_id", "ascending"), ("order", "ascending")])
    user = h.column("user_id").combine_chunks()
    n = len(user)
    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = np.asarray(pc.not_equal(user.slice(1), user.slice(0, n - 1)))
    starts = np.flatnonzero(new_user)
    group = np.cumsum(new_user) - 1
    rank = np.arange(n) - starts[group]
    length = np.diff(np.append(starts, n))[group]
    t0 = np.asarray(user_first.column("ts").take(pc.index_in(user, value_set=user_first.column("user_id"))))
    ts = t0 - HISTORY_GAP_S - (length - 1 - rank) * HISTORY_STEP_S
    item = h.column("item_id").combine_chunks()
    for start in range(0, n, EVENT_CHUNK_ROWS):
        u, it = user.slice(start, EVENT_CHUNK_ROWS), item.slice(start, EVENT_CHUNK_ROWS)
        writer.append_events(_events(join_str("mind-h-", u, "-", it), ts[start:start + EVENT_CHUNK_ROWS], u, it, "click"))
    return _min_merge(None, pa.table({"item_id": item, "ts": ts}), ["item_id"], "ts")


def _items_table(news: pd.DataFrame, first_seen_tbl: pa.Table) -> pd.DataFrame:
    """Every referenced item plus every news.tsv item, with metadata where known."""
    first_seen = pd.Series(first_seen_tbl.column("ts").to_numpy(),
                           index=first_seen_tbl.column("item_id").to_numpy(zero_copy_only=False))
    ids = pd.Index(first_seen.index).union(pd.Index(news["item_id"]))
    items = pd.DataFrame({"item_id": ids.astype(object)})
    items = items.merge(news.drop_duplicates("item_id"), on="item_id", how="left", indicator=True)
    items["has_metadata"] = items["_merge"] == "both"
    items = items.drop(columns="_merge")
    items["title"] = items["title"].fillna("")
    items["abstract"] = items["abstract"].fillna("")
    items["category"] = items["category"].fillna("unknown")
    items["subcategory"] = items["subcategory"].fillna("unknown")
    items["creator"] = "unknown"
    items["published_at"] = items["item_id"].map(first_seen).to_numpy(dtype=np.float64)
    cols = ["item_id", "title", "category", "subcategory", "creator", "published_at", "abstract", "has_metadata"]
    return items[cols].sort_values("item_id", kind="stable").reset_index(drop=True)


def import_mind(src: Path, out: Path, progress: bool = True) -> DatasetMeta:
    """Import one MIND split folder (``behaviors.tsv`` + ``news.tsv``) into ``out``.

    Raises NotFound when a file is missing and SchemaError listing every malformed line
    (file, line number, field); nothing is left at ``out`` in that case.
    """
    src, out = Path(src), Path(out)
    behaviors = require_file(src / BEHAVIORS_FILE)
    news_path = require_file(src / NEWS_FILE)
    problems = Problems()
    extra = {
        "published_at": "first_seen",
        "history_ts": f"estimated: before the user's first impression, {HISTORY_GAP_S:g} s gap, "
                      f"{HISTORY_STEP_S:g} s between history items",
        "click_ts": f"impression ts + {CLICK_DELAY_S:g} s",
        "time_zone": "UTC (assumed)",
        "src": str(src.name),
    }
    with DatasetWriter(out, source="mind", extra=extra) as writer:
        reader = _BehaviorsReader(writer, problems)
        for chunk in iter_line_chunks(behaviors, chunk_lines=CHUNK_LINES, problems=problems,
                                      progress=progress, desc=f"MIND {BEHAVIORS_FILE}"):
            cols, line_no = split_fields(chunk, "\t", BEHAVIORS_FIELDS, BEHAVIORS_FILE, problems)
            reader.chunk(cols, line_no)
        reader.check_duplicate_ids()
        reader.finish()
        news = _read_news(news_path, problems)
        problems.raise_if_any(f"cannot import MIND from {src}")

        user_first = reader.user_first if reader.user_first is not None else pa.table(
            {"user_id": pa.array([], pa.string()), "ts": pa.array([], pa.float64())})
        hist_first = _history_events(writer, reader.history, user_first)
        first_seen = user_first.rename_columns(["item_id", "ts"]).slice(0, 0)
        for part in (reader.item_first, hist_first):
            if part is not None:
                first_seen = _min_merge(first_seen, part, ["item_id"], "ts")
        writer.write_items(_items_table(news, first_seen))
        writer.write_users({"user_id": user_first.sort_by("user_id").column("user_id")})
        writer.extra.update({
            "impressions": reader.n_impressions,
            "shown_items": reader.n_shown,
            "clicks_from_impressions": reader.n_clicks,
            "history_clicks": 0 if reader.history is None else reader.history.num_rows,
            "items_with_metadata": int(len(news)),
        })
        meta = writer.close()
    return meta
