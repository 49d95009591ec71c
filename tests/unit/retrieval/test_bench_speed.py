"""The ANN speed section of `feedrank bench retrieval` on a tiny corpus: every kind and
setting is measured against exact search, and the chosen setting meets the recall target."""

from __future__ import annotations

from click.testing import CliRunner

from feedrank.bench.retrieval import run_speed
from feedrank.cli.bench_retrieval import retrieval


def test_speed_section_sweeps_settings_and_picks_a_setting_above_the_recall_target():
    out = run_speed(n_items=3000, dim=16, n_queries=20, ef_search=(100, 150), nprobe=(8, 32), say=lambda m: None)
    kinds = out["kinds"]
    assert set(kinds) == {"flat", "hnsw", "ivfflat", "ivfpq"}
    assert [s["value"] for s in kinds["hnsw"]["settings"]] == [100, 150]
    assert [s["value"] for s in kinds["ivfpq"]["settings"]] == [8, 32]
    ivf = kinds["ivfflat"]["settings"]  # the nprobe really reaches the search: more lists, no lower recall
    assert [s["value"] for s in ivf] == [8, 32] and kinds["ivfflat"]["nlist"] > 32
    assert ivf[1]["recall@100_vs_exact"] > ivf[0]["recall@100_vs_exact"] + 0.1
    assert kinds["flat"]["settings"][0]["recall@100_vs_exact"] == 1.0
    for row in kinds.values():
        assert row["build_s"] >= 0 and row["index_mb"] > 0
        for s in row["settings"]:
            assert 0.0 <= s["recall@100_vs_exact"] <= 1.0 and s["p99_ms"] >= s["p50_ms"] > 0
            assert 0.0 <= s["filtered_recall@100_vs_exact"] <= 1.0
    chosen = kinds["hnsw"]["chosen"]
    assert chosen is not None and chosen["recall@100_vs_exact"] >= 0.95 and "speedup_p50_vs_exact" in chosen


def test_cli_rejects_bad_speed_options():
    runner = CliRunner()
    bad_kind = runner.invoke(retrieval, ["--only", "speed", "--speed-kinds", "flat,annoy"])
    assert bad_kind.exit_code != 0 and "annoy" in bad_kind.output
    bad_ef = runner.invoke(retrieval, ["--only", "speed", "--speed-ef", "100,x"])
    assert bad_ef.exit_code != 0 and "integers" in bad_ef.output
    no_data = runner.invoke(retrieval, ["--only", "quality"])
    assert no_data.exit_code != 0 and "--data" in no_data.output
