"""Importers: MIND and MovieLens on the real files (read in place) and on tiny synthetic
layouts written here (made-up values, not copied data)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from feedrank.data.dataset import load_dataset, validate_dataset
from feedrank.data.importers import import_mind, import_movielens, split_tokens
from feedrank.errors import NotFound, SchemaError

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- helpers


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def _news_line(nid: str, cat: str, sub: str, title: str) -> str:
    return "\t".join([nid, cat, sub, title, f"abstract of {nid}", f"https://example.invalid/{nid}", "[]", "[]"])


def _tiny_mind(root: Path) -> Path:
    """Three impressions, two users; history with a repeat, one empty history."""
    _write(root / "behaviors.tsv", [
        "1\tUA\t11/10/2019 9:00:00 AM\tNX NY NX NZ\tN1-0 N2-1 N3-0",
        "2\tUA\t11/10/2019 8:00:00 AM\tNX NY NX NZ\tN3-1 N4-0",
        "3\tUB\t11/11/2019 1:30:00 PM\t\tN1-1",
    ])
    _write(root / "news.tsv", [
        _news_line("N1", "sports", "tennis", 'He said "quoted" title'),
        _news_line("NY", "news", "world", "History item with metadata"),
        _news_line("N9", "autos", "cars", "Never shown"),
    ])
    return root


def _cli() -> click.Group:
    """The real root command."""
    from feedrank.cli.main import cli

    return cli


# ---------------------------------------------------------------- MIND: synthetic


def test_mind_tiny_maps_everything(tmp_path: Path) -> None:
    meta = import_mind(_tiny_mind(tmp_path / "src"), tmp_path / "out", progress=False)
    assert validate_dataset(tmp_path / "out") == []
    ds = load_dataset(tmp_path / "out")
    ev = ds.events_frame()
    imp = ev[ev.kind == "impression"]
    assert len(imp) == 6 and meta.events_by_kind["impression"] == 6
    assert set(imp.request_id) == {"mind-1", "mind-2", "mind-3"}
    assert imp[imp.request_id == "mind-1"].sort_values("position").item_id.tolist() == ["N1", "N2", "N3"]
    clicks = ev[(ev.kind == "click") & ev.request_id.notna()]
    assert sorted(clicks.event_id) == ["mind-1-1-clk", "mind-2-0-clk", "mind-3-0-clk"]
    c = clicks.set_index("event_id")
    i = imp.set_index("event_id")
    assert c.loc["mind-1-1-clk", "ts"] == i.loc["mind-1-1-imp", "ts"] + 1.0
    assert c.loc["mind-1-1-clk", "position"] == 1
    # 9:00 AM on 2019-11-10, read as UTC
    assert i.loc["mind-1-0-imp", "ts"] == pd.Timestamp("2019-11-10 09:00:00", tz="UTC").timestamp()
    hist = ev[(ev.kind == "click") & ev.request_id.isna()].sort_values("ts")
    assert hist.item_id.tolist() == ["NX", "NY", "NZ"]  # deduplicated, order kept
    assert set(hist.user_id) == {"UA"}  # UB has an empty history
    first_imp_ua = imp[imp.user_id == "UA"].ts.min()  # the 8:00 AM row
    assert hist.ts.max() == first_imp_ua - 1.0
    assert hist.event_id.tolist() == ["mind-h-UA-NX", "mind-h-UA-NY", "mind-h-UA-NZ"]

    items = ds.items_frame().set_index("item_id")
    assert set(items.index) == {"N1", "N2", "N3", "N4", "NX", "NY", "NZ", "N9"}
    assert items.loc["N1", "title"] == 'He said "quoted" title'
    assert items.loc["N1", ["category", "subcategory"]].tolist() == ["sports", "tennis"]
    assert items.loc["N2", ["title", "category", "subcategory"]].tolist() == ["", "unknown", "unknown"]
    assert (items.creator == "unknown").all()
    assert items.loc["N9", "has_metadata"] and np.isnan(items.loc["N9", "published_at"])
    assert items.loc["N3", "published_at"] == first_imp_ua  # first seen at the 8:00 AM impression
    assert items.loc["NX", "published_at"] == hist.ts.min()
    assert sorted(ds.users.column("user_id").to_pylist()) == ["UA", "UB"]
    assert ds.meta.extra["published_at"] == "first_seen"


def test_split_tokens_ignores_extra_whitespace() -> None:
    tokens, parent, index = split_tokens(pa.array(["a  b ", "", " c", "d e f"]))
    assert tokens.to_pylist() == ["a", "b", "c", "d", "e", "f"]
    assert parent.tolist() == [0, 0, 2, 3, 3, 3] and index.tolist() == [0, 1, 0, 0, 1, 2]


def test_mind_history_union_and_spacing(tmp_path: Path) -> None:
    src = _tiny_mind(tmp_path / "src")
    _write(src / "behaviors.tsv", [
        "7\tUC\t11/12/2019 10:00:00 AM\tNA  NB\t N1-0  N2-1 ",
        "8\tUC\t11/12/2019 9:00:00 AM\tNB NC\tN3-0",
    ])
    import_mind(src, tmp_path / "out", progress=False)
    ev = load_dataset(tmp_path / "out").events_frame()
    hist = ev[ev.request_id.isna()].sort_values("ts")
    assert hist.item_id.tolist() == ["NA", "NB", "NC"]  # union in file order
    assert hist.ts.max() == pd.Timestamp("2019-11-12 08:59:59", tz="UTC").timestamp()
    imp = ev[(ev.kind == "impression") & (ev.request_id == "mind-7")].sort_values("position")
    assert imp.item_id.tolist() == ["N1", "N2"] and imp.position.tolist() == [0, 1]


def test_mind_malformed_lines_list_every_problem(tmp_path: Path) -> None:
    src = _tiny_mind(tmp_path / "src")
    _write(src / "behaviors.tsv", [
        "1\tUA\t11/10/2019 9:00:00 AM\tNX\tN1-0 N2-1",
        "2\tUA\t11/10/2019 9:00:00 AM\tN1-0",
        "3\tUA\t2019-11-10 09:00:00\t\tN1-0",
        "4\tUA\t11/10/2019 9:00:00 AM\t\tN1-0 N2_1",
        "5\tUA\t11/10/2019 9:00:00 AM\t\tN1-2",
        "1\tUB\t11/10/2019 9:00:00 AM\t\tN1-0",
    ])
    with pytest.raises(SchemaError) as info:
        import_mind(src, tmp_path / "out", progress=False)
    probs = info.value.problems
    text = "\n".join(probs)
    assert "behaviors.tsv: line 2, field count: expected 5" in text
    assert "behaviors.tsv: line 3, field 'time'" in text
    assert "behaviors.tsv: line 4, field 'impressions': token 1 'N2_1' is not NEWSID-LABEL" in text
    assert "behaviors.tsv: line 5, field 'impressions': token 0 'N1-2' has label '2'" in text
    assert "behaviors.tsv: line 6, field 'impression_id': duplicate impression id (first at line 1)" in text
    assert len(probs) == 5
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_mind_bad_news_and_missing_files(tmp_path: Path) -> None:
    src = _tiny_mind(tmp_path / "src")
    _write(src / "news.tsv", [_news_line("N1", "a", "b", "t"), "N2\tonly\tthree", _news_line("N1", "c", "d", "u")])
    with pytest.raises(SchemaError) as info:
        import_mind(src, tmp_path / "out", progress=False)
    assert any(p.startswith("news.tsv: line 2, field count") for p in info.value.problems)
    assert any(p.startswith("news.tsv: line 3, field 'news_id': duplicate") for p in info.value.problems)
    (src / "news.tsv").unlink()
    with pytest.raises(NotFound, match="news.tsv"):
        import_mind(src, tmp_path / "out", progress=False)


# ---------------------------------------------------------------- MIND: the real sample


@pytest.fixture(scope="module")
def mind(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mind") / "ds"
    meta = import_mind(shared_data / "MIND" / "MINDsmall_train", out, progress=False)
    return meta, load_dataset(out)  # load_dataset validates (SchemaError otherwise)


@pytest.mark.shared_data
def test_mind_real_counts(mind) -> None:
    meta, ds = mind
    ev = ds.events_frame()
    imp = ev[ev.kind == "impression"]
    imp_clicks = ev[(ev.kind == "click") & ev.request_id.notna()]
    hist = ev[(ev.kind == "click") & ev.request_id.isna()]
    assert meta.extra["impressions"] == 5000 and imp.request_id.nunique() == 5000
    assert len(imp) == 189_359 and meta.events_by_kind["impression"] == 189_359
    assert len(imp_clicks) == 7_542 and meta.extra["clicks_from_impressions"] == 7_542
    assert ds.users.num_rows == 4_637 and meta.n_users == 4_637
    assert imp.item_id.nunique() == 7_457 and hist.item_id.nunique() == 16_000
    assert meta.events_by_kind["click"] == 7_542 + len(hist)
    assert not hist.duplicated(["user_id", "item_id"]).any()
    assert ev.event_id.is_unique
    assert pd.Timestamp(meta.ts_min, unit="s").date() >= pd.Timestamp("2019-11-08").date()
    assert pd.Timestamp(meta.ts_max, unit="s") < pd.Timestamp("2019-11-15")


@pytest.mark.shared_data
def test_mind_real_positions_and_history_order(mind, shared_data: Path) -> None:
    _, ds = mind
    ev = ds.events_frame(["ts", "user_id", "item_id", "kind", "position", "request_id"])
    imp = ev[ev.kind == "impression"]
    g = imp.groupby("request_id")["position"].agg(["min", "max", "count", "nunique"])
    assert (g["min"] == 0).all() and (g["max"] == g["count"] - 1).all() and (g["nunique"] == g["count"]).all()
    hist = ev[(ev.kind == "click") & ev.request_id.isna()]
    assert hist.position.isna().all()
    first_imp = imp.groupby("user_id")["ts"].min()
    last_hist = hist.groupby("user_id")["ts"].max()
    assert (last_hist < first_imp.reindex(last_hist.index)).all()
    # users whose history column is empty (107 rows in the README) get no history clicks
    raw = pd.read_csv(shared_data / "MIND" / "MINDsmall_train" / "behaviors.tsv", sep="\t", header=None,
                      quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    assert (raw[3] == "").sum() == 107
    assert set(raw.loc[raw[3] == "", 1]) == set(first_imp.index) - set(last_hist.index)
    # one user's history, in file order, equals their history clicks ordered by time
    row = raw.iloc[0]
    mine = hist[hist.user_id == row[1]].sort_values("ts").item_id.tolist()
    assert mine == list(dict.fromkeys(row[3].split()))


@pytest.mark.shared_data
def test_mind_real_items(mind) -> None:
    _, ds = mind
    items = ds.items_frame()
    ev = ds.events_frame(["item_id", "kind", "request_id"])
    assert set(ev.item_id) <= set(items.item_id)
    assert items.has_metadata.sum() == 2_000
    missing = items[~items.has_metadata]
    assert len(missing) > 20_000
    assert (missing.category == "unknown").all() and (missing.subcategory == "unknown").all()
    assert (missing.title == "").all()
    hist_ids = set(ev.item_id[ev.request_id.isna()])
    shown_ids = set(ev.item_id[ev.kind == "impression"])
    known = set(items.item_id[items.has_metadata])
    assert len(hist_ids & known) == 588 and len(shown_ids & known) == 284
    assert items[items.has_metadata].category.nunique() <= 18
    # published_at is set for every item an event references
    assert items.set_index("item_id").loc[list(set(ev.item_id)), "published_at"].notna().all()


# ---------------------------------------------------------------- MovieLens


@pytest.mark.shared_data
def test_movielens_100k(shared_data: Path, tmp_path: Path) -> None:
    meta = import_movielens(shared_data / "MovieLens" / "ml-100k", tmp_path / "ds", progress=False)
    ds = load_dataset(tmp_path / "ds")
    assert meta.source == "movielens-100k"
    assert meta.n_events == 100_000 and meta.events_by_kind["click"] == 100_000
    assert meta.n_users == 943 and ds.users.num_rows == 943 and meta.n_items == 1_682
    assert {"age", "gender", "occupation", "zip"} <= set(ds.users.column_names)
    assert pd.Timestamp(meta.ts_min, unit="s").strftime("%Y-%m") == "1997-09"
    assert pd.Timestamp(meta.ts_max, unit="s").strftime("%Y-%m") == "1998-04"
    ev = ds.events_frame(["ts", "item_id", "rating"])
    assert ev.rating.between(1, 5).all()
    items = ds.items_frame().set_index("item_id")
    assert (items.published_at == ev.groupby("item_id").ts.min().reindex(items.index)).all()
    assert (items.category != "").all() and (items.creator == "unknown").all()
    assert (items.loc[items.genres.str.count(r"\|") == 0, "subcategory"]
            == items.loc[items.genres.str.count(r"\|") == 0, "category"]).all()


@pytest.mark.shared_data
def test_movielens_latest_small_and_min_rating(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "MovieLens" / "ml-latest-small"
    meta = import_movielens(src, tmp_path / "all", progress=False)
    assert load_dataset(tmp_path / "all").events.num_rows == 100_836
    assert meta.source == "movielens-latest-small"
    assert (meta.n_events, meta.n_users, meta.n_items) == (100_836, 610, 9_742)
    liked = import_movielens(src, tmp_path / "liked", min_rating=4.0, progress=False)
    raw = pd.read_csv(src / "ratings.csv")
    assert liked.n_events == int((raw.rating >= 4.0).sum())
    ds = load_dataset(tmp_path / "liked")
    assert ds.events_frame(["rating"]).rating.min() >= 4.0
    assert ds.items.num_rows == 9_742  # every movie, rated or not
    items = ds.items_frame().set_index("item_id")
    no_genre = items[items.genres == ""]
    assert len(no_genre) > 0 and (no_genre.category == "unknown").all()


def _tiny_ml1m(root: Path) -> Path:
    _write(root / "ratings.dat", ["1::10::5::978300760", "1::20::3::978302109", "2::10::4::978301968",
                                  "2::30::1::978300275", "3::40::2::978824291"])
    _write(root / "movies.dat", ["10::Made Up One (1999)::Comedy|Drama", "20::Caf\xe9 Imaginaire (2001)::Horror",
                                 "30::Nothing Real (1990)::Action|Sci-Fi|War", "50::Unrated (2000)::Drama"],
           encoding="latin-1")
    _write(root / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"])
    return root


def test_movielens_1m_tiny_layout(tmp_path: Path) -> None:
    meta = import_movielens(_tiny_ml1m(tmp_path / "ml-1m"), tmp_path / "ds", min_rating=2.0, progress=False)
    assert meta.source == "movielens-1m" and meta.extra["layout"] == "1m"
    ds = load_dataset(tmp_path / "ds")
    ev = ds.events_frame().set_index("event_id")
    assert sorted(ev.index) == ["ml-1-10", "ml-1-20", "ml-2-10", "ml-3-40"]  # rating 1 dropped
    assert ev.loc["ml-1-20", "rating"] == 3.0 and ev.loc["ml-1-20", "kind"] == "click"
    items = ds.items_frame().set_index("item_id")
    assert items.index.tolist() == ["10", "20", "30", "40", "50"]
    assert items.loc["10", ["category", "subcategory"]].tolist() == ["Comedy", "Drama"]
    assert items.loc["20", ["title", "category", "subcategory"]].tolist() == ["Caf\xe9 Imaginaire (2001)", "Horror", "Horror"]
    assert items.loc["30", "published_at"] == 978300275.0  # first rating, even below min_rating
    assert items.loc["40", ["title", "category"]].tolist() == ["", "unknown"]  # rated, not in movies.dat
    assert np.isnan(items.loc["50", "published_at"])
    users = ds.users.to_pandas().set_index("user_id")
    assert users.loc["2", ["gender", "age", "occupation"]].tolist() == ["M", 56, "16"]


def test_movielens_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError) as info:
        import_movielens(tmp_path / "empty", tmp_path / "out", progress=False)
    for name in ("u.data", "ratings.dat", "ratings.csv", "movies.csv"):
        assert name in str(info.value)
    with pytest.raises(NotFound):
        import_movielens(tmp_path / "nope", tmp_path / "out", progress=False)
    src = _tiny_ml1m(tmp_path / "bad")
    _write(src / "ratings.dat", ["1::10::5::978300760", "1::20::x::978302109", "2::10::4", "2:30::1::97830"])
    with pytest.raises(SchemaError) as info:
        import_movielens(src, tmp_path / "out", progress=False)
    text = "\n".join(info.value.problems)
    assert "ratings.dat: line 2, field 'rating': 'x' is not a number" in text
    assert "ratings.dat: line 3, field count: expected 4" in text
    assert "ratings.dat: line 4, field count" in text
    assert not (tmp_path / "out").exists()
    csv_src = tmp_path / "ml-latest-tiny"
    _write(csv_src / "ratings.csv", ["user,movie,rating,timestamp", "1,1,4.0,964982703"])
    _write(csv_src / "movies.csv", ["movieId,title,genres", '1,"Comma, The (1999)",Comedy'])
    with pytest.raises(SchemaError, match="ratings.csv: line 1, field 'header'"):
        import_movielens(csv_src, tmp_path / "out", progress=False)
    _write(csv_src / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703"])
    import_movielens(csv_src, tmp_path / "out", progress=False)
    assert load_dataset(tmp_path / "out").items_frame().title.tolist() == ["Comma, The (1999)"]


# ---------------------------------------------------------------- CLI


def test_cli_help_has_examples() -> None:
    runner = CliRunner()
    for cmd in ("mind", "movielens"):
        res = runner.invoke(_cli(), ["data", "import", cmd, "--help"])
        assert res.exit_code == 0, res.output
        assert "Example:" in res.output and f"feedrank data import {cmd} " in res.output


def test_cli_import_mind_tiny_prints_summary(tmp_path: Path) -> None:
    src = _tiny_mind(tmp_path / "src")
    res = CliRunner().invoke(_cli(), ["data", "import", "mind", str(src), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["source"] == "mind" and summary["events_by_kind"] == {"impression": 6, "click": 6}
    assert summary["ts_max"] == "2019-11-11T13:30:01+00:00"


@pytest.mark.shared_data
def test_cli_import_movielens_real(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "MovieLens" / "ml-100k"
    res = CliRunner().invoke(_cli(), ["data", "import", "movielens", str(src), "--out", str(tmp_path / "o"),
                                      "--min-rating", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_items"] == 1_682 and summary["extra"]["ratings"] == 100_000
    assert 0 < summary["n_events"] < 100_000
    assert summary["ts_min"].startswith("1997-09")


def test_cli_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    res = CliRunner().invoke(_cli(), ["data", "import", "movielens", str(tmp_path), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, SchemaError)
    from feedrank.cli.main import main

    monkeypatch.setattr(sys, "argv", ["feedrank", "data", "import", "movielens", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "not a known MovieLens layout" in capsys.readouterr().err
