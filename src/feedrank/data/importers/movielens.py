"""MovieLens (GroupLens) -> canonical dataset.

Three layouts are recognised by the files in the folder:

==============  ======================================  =====================================
layout          files                                    notes
==============  ======================================  =====================================
``100k``        ``u.data``, ``u.item``, ``u.user``       tab / ``|`` separated, u.item latin-1,
                (``u.genre``)                            19 genre flags
``1m``          ``ratings.dat``, ``movies.dat``,         ``::`` separated, latin-1
                ``users.dat``
``csv``         ``ratings.csv``, ``movies.csv``          header row; ml-latest(-small), 20m, 25m
==============  ======================================  =====================================

Each rating with ``rating >= min_rating`` becomes one ``click`` event (event id
``ml-<user>-<item>``) with the rating kept as an extra float column ``rating``. Items
come from the movies file (plus any rated id missing there, title "" and category
"unknown"): category = first genre, subcategory = second genre (or the first again),
creator "unknown", ``published_at`` = the item's first rating time over *all* ratings (an
estimate; MovieLens has no publish times). Users: the users file where there is one,
plus every rating user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feedrank.data.dataset import DatasetWriter
from feedrank.data.importers import (
    Problems,
    iter_line_chunks,
    join_str,
    parse_numbers,
    sanitize_id,
    split_fields,
)
from feedrank.data.schema import DatasetMeta
from feedrank.errors import NotFound, SchemaError

CHUNK_LINES = 1_000_000
# u.genre order, used when a ml-100k folder has no u.genre file.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
CSV_NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class Layout:
    """Where and how one MovieLens release keeps its files."""

    name: str
    ratings: str
    sep: str
    skip_lines: int
    movies: str
    users: str | None


LAYOUTS = (
    Layout("100k", "u.data", "\t", 0, "u.item", "u.user"),
    Layout("1m", "ratings.dat", "::", 0, "movies.dat", "users.dat"),
    Layout("csv", "ratings.csv", ",", 1, "movies.csv", None),
)
RATING_FIELDS = ("user_id", "item_id", "rating", "timestamp")


def detect_movielens_layout(src: Path) -> Layout:
    """The layout of a MovieLens folder; SchemaError naming what was looked for."""
    src = Path(src)
    if not src.is_dir():
        raise NotFound(f"{src}: MovieLens folder not found")
    for layout in LAYOUTS:
        if (src / layout.ratings).is_file() and (src / layout.movies).is_file():
            return layout
    kinds = {"100k": "ml-100k", "1m": "ml-1m", "csv": "ml-latest-small, ml-20m, ml-25m"}
    looked = "; ".join(f"{lay.ratings} + {lay.movies} ({kinds[lay.name]})" for lay in LAYOUTS)
    raise SchemaError(f"{src}: not a known MovieLens layout; looked for: {looked}")


def source_name(src: Path, layout: Layout) -> str:
    """``movielens-100k``, ``movielens-1m``, or ``movielens-<folder>`` for csv releases."""
    if layout.name != "csv":
        return f"movielens-{layout.name}"
    name = src.resolve().name
    return "movielens-" + sanitize_id(name[3:] if name.startswith("ml-") else "latest")


def _genre_columns(genres: pd.Series) -> tuple[pd.Series, pd.Series]:
    """category (first genre) and subcategory (second, else first) from ``a|b|c``."""
    parts = genres.fillna("").astype(object).str.split("|", n=2, expand=True).reindex(columns=[0, 1])
    parts = parts.astype(object).where(parts.notna(), "")
    first = parts[0].str.strip()
    first = first.where(first != "", "unknown")
    second = parts[1].str.strip()
    return first, second.where(second != "", first)


def _read_table(path: Path, sep: str, names: tuple[str, ...], encoding: str,
                problems: Problems) -> tuple[pd.DataFrame, np.ndarray]:
    """A small ``sep``-separated metadata file -> DataFrame of strings + line numbers."""
    frames, lines = [], []
    for chunk in iter_line_chunks(path, encoding=encoding, chunk_lines=CHUNK_LINES, problems=problems):
        cols, line_no = split_fields(chunk, sep, names, path.name, problems)
        frames.append(pd.DataFrame({k: v.to_numpy(zero_copy_only=False) for k, v in cols.items()}))
        lines.append(line_no)
    if not frames:
        return pd.DataFrame({k: pd.Series([], dtype=object) for k in names}), np.zeros(0, np.int64)
    return pd.concat(frames, ignore_index=True), np.concatenate(lines)


def _read_movies(src: Path, layout: Layout, problems: Problems) -> pd.DataFrame:
    """Movies file -> DataFrame(item_id, title, genres, line) with genres ``a|b``."""
    path = src / layout.movies
    if layout.name == "100k":
        genre_path = src / "u.genre"
        genres = ML100K_GENRES
        if genre_path.is_file():
            rows = [ln.split("|") for ln in genre_path.read_text(encoding="latin-1").splitlines() if ln.strip()]
            genres = tuple(name for name, _ in sorted(rows, key=lambda r: int(r[1])))
        names = ("item_id", "title", "release_date", "video_release_date", "url") + tuple(f"g{i}" for i in range(len(genres)))
        df, line_no = _read_table(path, "|", names, "latin-1", problems)
        flags = df[[f"g{i}" for i in range(len(genres))]].to_numpy(dtype=object)
        bad = ~np.isin(flags, ["0", "1"])
        for r, c in zip(*np.nonzero(bad)):
            problems.add(f"{path.name}: line {line_no[r]}, field 'genre {genres[c]}': {flags[r, c]!r} is not 0 or 1")
        on = flags == "1"
        df["genres"] = ["|".join(g for g, f in zip(genres, row) if f) for row in on]
    elif layout.name == "1m":
        df, line_no = _read_table(path, "::", ("item_id", "title", "genres"), "latin-1", problems)
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            problems.add(f"{path.name}: not a readable CSV file: {exc}")
            return pd.DataFrame({"item_id": [], "title": [], "genres": [], "line": []})
        missing = [c for c in ("movieId", "title", "genres") if c not in df.columns]
        for c in missing:
            problems.add(f"{path.name}: line 1, field '{c}': missing from the header")
        if missing:
            return pd.DataFrame({"item_id": [], "title": [], "genres": [], "line": []})
        df = df.rename(columns={"movieId": "item_id"})
        df["genres"] = df["genres"].where(df["genres"] != CSV_NO_GENRES, "")
        line_no = np.arange(2, len(df) + 2)  # 1 header line; titles hold no newlines
    df["item_id"] = df["item_id"].str.strip()
    df["line"] = line_no
    ok = df["item_id"].str.fullmatch(r"[0-9]+")
    for _, row in df[~ok].iterrows():
        problems.add(f"{path.name}: line {row['line']}, field 'item_id': {row['item_id']!r} is not an integer")
    for _, row in df[df.duplicated("item_id")].iterrows():
        problems.add(f"{path.name}: line {row['line']}, field 'item_id': duplicate movie id {row['item_id']!r}")
    return df[["item_id", "title", "genres", "line"]]


def _read_users(src: Path, layout: Layout, problems: Problems) -> pd.DataFrame | None:
    """Users file -> DataFrame(user_id, age, gender, occupation, zip), or None."""
    if layout.users is None or not (src / layout.users).is_file():
        return None
    path = src / layout.users
    if layout.name == "100k":
        names = ("user_id", "age", "gender", "occupation", "zip")
        df, line_no = _read_table(path, "|", names, "latin-1", problems)
    else:
        names = ("user_id", "gender", "age", "occupation", "zip")
        df, line_no = _read_table(path, "::", names, "latin-1", problems)
    age, _ = parse_numbers(pa.array(df["age"].to_numpy(dtype=object), type=pa.string()), "age", line_no, path.name, problems)
    uid, _ = parse_numbers(pa.array(df["user_id"].to_numpy(dtype=object), type=pa.string()), "user_id", line_no, path.name, problems)
    return pd.DataFrame({"user_id": uid.astype(str), "age": age.astype(np.int32), "gender": df["gender"].to_numpy(dtype=object),
                         "occupation": df["occupation"].to_numpy(dtype=object), "zip": df["zip"].to_numpy(dtype=object)})


def _check_header(path: Path, layout: Layout, problems: Problems) -> None:
    if layout.skip_lines == 0:
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip()
    if header.split(",")[:4] != ["userId", "movieId", "rating", "timestamp"]:
        problems.add(f"{path.name}: line 1, field 'header': {header!r}, expected 'userId,movieId,rating,timestamp'")


def import_movielens(src: Path, out: Path, min_rating: float = 0.0, progress: bool = True) -> DatasetMeta:
    """Import a MovieLens folder (ml-100k, ml-1m or a csv release) into ``out``.

    Ratings ``>= min_rating`` become ``click`` events with an extra ``rating`` column.
    Raises NotFound / SchemaError (unknown layout, or every malformed line listed).
    """
    src, out = Path(src), Path(out)
    layout = detect_movielens_layout(src)
    problems = Problems()
    ratings_path = src / layout.ratings
    _check_header(ratings_path, layout, problems)
    extra = {
        "published_at": "first_rating",
        "layout": layout.name,
        "min_rating": float(min_rating),
        "event_kind": "click (one per rating >= min_rating; rating kept in column 'rating')",
        "time_zone": "UTC (unix timestamps)",
    }
    with DatasetWriter(out, source=source_name(src, layout), extra=extra) as writer:
        item_first: list[pd.DataFrame] = []
        users: list[np.ndarray] = []
        n_ratings = 0
        for chunk in iter_line_chunks(ratings_path, chunk_lines=CHUNK_LINES, skip_lines=layout.skip_lines,
                                      problems=problems, progress=progress, desc=f"MovieLens {layout.ratings}"):
            cols, line_no = split_fields(chunk, layout.sep, RATING_FIELDS, layout.ratings, problems)
            uid, bad = parse_numbers(cols["user_id"], "user_id", line_no, layout.ratings, problems)
            iid, b2 = parse_numbers(cols["item_id"], "item_id", line_no, layout.ratings, problems)
            rating, b3 = parse_numbers(cols["rating"], "rating", line_no, layout.ratings, problems, kind="float")
            ts, b4 = parse_numbers(cols["timestamp"], "timestamp", line_no, layout.ratings, problems)
            n_ratings += len(line_no)
            if problems or (bad | b2 | b3 | b4).any():
                continue  # keep validating, write nothing more
            user, item = pa.array(uid.astype(str)), pa.array(iid.astype(str))
            tsf = ts.astype(np.float64)
            item_first.append(pd.DataFrame({"item_id": iid, "ts": tsf}).groupby("item_id", sort=False)["ts"].min().reset_index())
            users.append(np.unique(uid))
            keep = rating >= min_rating
            mask = pa.array(keep)
            n = int(keep.sum())
            u, it = user.filter(mask), item.filter(mask)
            writer.append_events({
                "event_id": join_str("ml-", u, "-", it), "ts": tsf[keep], "user_id": u, "item_id": it,
                "kind": pa.repeat(pa.scalar("click"), n), "position": pa.nulls(n, pa.int32()),
                "request_id": pa.nulls(n, pa.string()), "propensity": pa.nulls(n, pa.float64()),
                "dwell_ms": pa.nulls(n, pa.float64()), "rating": rating[keep],
            })
        movies = _read_movies(src, layout, problems)
        user_meta = _read_users(src, layout, problems)
        problems.raise_if_any(f"cannot import MovieLens ({layout.name}) from {src}")

        first = (pd.concat(item_first, ignore_index=True).groupby("item_id")["ts"].min()
                 if item_first else pd.Series(dtype=np.float64))
        first.index = first.index.astype(str)
        items = pd.DataFrame({"item_id": pd.Index(movies["item_id"]).union(first.index).astype(object)})
        items = items.merge(movies.drop(columns="line"), on="item_id", how="left")
        items["title"] = items["title"].fillna("")
        items["genres"] = items["genres"].fillna("")
        items["category"], items["subcategory"] = _genre_columns(items["genres"])
        items["creator"] = "unknown"
        items["published_at"] = items["item_id"].map(first).to_numpy(dtype=np.float64)
        items = items.sort_values("item_id", key=lambda s: s.astype(np.int64), kind="stable")
        writer.write_items(items[["item_id", "title", "category", "subcategory", "creator", "published_at", "genres"]])

        rated = np.unique(np.concatenate(users)) if users else np.zeros(0, np.int64)
        all_users = pd.DataFrame({"user_id": rated.astype(str)})
        if user_meta is not None:
            all_users = user_meta.merge(all_users, on="user_id", how="outer")
        all_users = all_users.sort_values("user_id", key=lambda s: s.astype(np.int64), kind="stable")
        writer.write_users(all_users.reset_index(drop=True))
        writer.extra.update({"ratings": n_ratings, "movies_in_file": int(len(movies))})
        meta = writer.close()
    return meta
