"""`feedrank report`: one self-contained HTML file about a model (optionally against a baseline).

Contents: ranking metrics with 90% intervals and their paired deltas to the baseline
(request-level bootstrap), per-segment metrics, calibration curve, served-feed metrics and
the creator exposure Lorenz curve (``beyond.py``), latency from the last bench
(``benchmarks/results/feed.json``, ``serve.json``), CTR over time from the last simulation
when its output exists, and the off-policy coverage check (``ope_coverage.json``).

Plots are matplotlib PNGs embedded as base64 ``data:`` URIs, so the file has no external
references. ``write_report`` also writes ``<out>.json`` (the numbers behind the page), which
the serving dashboard shows as "the last evaluation report".
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.beyond import Scored, evaluate_beyond, load_and_prepare, test_impression_rows
from feedrank.evaluation.click_models import debiased_ndcg
from feedrank.evaluation.metrics import auc, expected_calibration_error, lorenz_curve, ndcg_at_k

BOOTSTRAP = 100
LOWER_IS_BETTER = ("ece",)
SIM_CANDIDATES = ("simulate.json", "simulation.json", "sim.json")


# --------------------------------------------------------------------------- numbers


def _metric_fns(exam: np.ndarray | None) -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]]:
    fns: dict[str, Callable] = {
        "auc": lambda y, p, g, e: auc(y, p),
        "ndcg@10": lambda y, p, g, e: ndcg_at_k(y, p, g, 10),
        "ece": lambda y, p, g, e: expected_calibration_error(y, np.clip(p, 0, 1)),
    }
    if exam is not None:
        fns["debiased_ndcg@10"] = lambda y, p, g, e: debiased_ndcg(y, p, g, e, 10)
    return fns


def paired_bootstrap(labels: np.ndarray, groups: np.ndarray, scores: dict[str, np.ndarray], exam: np.ndarray | None = None,
                     reps: int = BOOTSTRAP, level: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """Metrics of each scorer with percentile intervals, and each scorer's delta to the first,
    resampling whole requests (groups) with replacement ``reps`` times.

    Args: labels, groups (R,); scores name -> (R,) (the first is the model); exam (R,) or None.
    Returns: {metric: {name: {value, lo, hi}, "delta:<name>": {value, lo, hi}}}.
    """
    fns = _metric_fns(exam)
    names = list(scores)
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    sizes = np.diff(np.r_[starts, len(g_sorted)])
    G = len(starts)
    e_all = exam if exam is not None else np.ones(len(labels))
    point = {m: {n: fn(labels, scores[n], groups, e_all) for n in names} for m, fn in fns.items()}
    rng = np.random.default_rng(seed)
    samples = {m: {n: [] for n in names} for m in fns}
    for _ in range(reps):
        pick = rng.integers(0, G, G)
        sz = sizes[pick]
        rows = order[np.repeat(starts[pick], sz) + (np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz))]
        new_g = np.repeat(np.arange(G), sz)
        y, e = labels[rows], e_all[rows]
        for m, fn in fns.items():
            for n in names:
                samples[m][n].append(fn(y, scores[n][rows], new_g, e))
    a = (1 - level) / 2
    out: dict[str, Any] = {}
    for m in fns:
        out[m] = {}
        for n in names:
            s = np.asarray(samples[m][n], dtype=np.float64)
            out[m][n] = {"value": float(point[m][n]), "lo": float(np.nanquantile(s, a)), "hi": float(np.nanquantile(s, 1 - a))}
            if n != names[0]:
                d = np.asarray(samples[m][names[0]], dtype=np.float64) - s
                out[m][f"delta:{n}"] = {"value": float(point[m][names[0]] - point[m][n]),
                                        "lo": float(np.nanquantile(d, a)), "hi": float(np.nanquantile(d, 1 - a))}
    return out


def _popularity_scores(prep, s: Scored) -> np.ndarray:
    """Train-click popularity as of each impression (the baseline when none is given)."""
    from feedrank.features.history import counts_before

    ev = prep.events
    clk = ev.mask("click")
    imp = ev.mask("impression")
    n = len(prep.catalog)
    c = counts_before(ev.item_idx[clk], ev.ts[clk], s.items, s.ts, n).astype(np.float64)
    i = counts_before(ev.item_idx[imp], ev.ts[imp], s.items, s.ts, n).astype(np.float64)
    return (c + 1.0) / (i + 50.0)  # smoothed CTR, a probability-like score


def build_report_data(model_dir: str | Path, baseline_dir: str | Path | None = None, data_dir: str | Path | None = None, *,
                      bench_dir: str | Path = "benchmarks/results", simulation: str | Path | None = None,
                      n_users: int = 300, max_scored: int = 100_000, reps: int = BOOTSTRAP, seed: int = 0,
                      say: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (plots are drawn from it)."""
    t0 = time.perf_counter()
    art, prep = load_and_prepare(model_dir, data_dir, say=say)
    rows = test_impression_rows(prep, max_scored, seed)
    data: dict[str, Any] = {"model": {"dir": str(model_dir), "version": art.version}, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "data_dir": str(prep.dataset.root), "n_test_impressions": int(len(rows))}
    beyond_m, s_m = evaluate_beyond(art, prep, n_users=n_users, rows=rows, seed=seed, say=say)
    data["model"]["beyond"] = beyond_m
    scores: dict[str, np.ndarray] = {}
    exam = None
    if s_m is not None:
        scores[art.version] = s_m.probs
        theta = np.asarray(beyond_m["accuracy"]["click_model"]["theta"])
        exam = theta[np.clip(s_m.position, 0, len(theta) - 1)]
    if baseline_dir is not None:
        art_b, prep_b = load_and_prepare(baseline_dir, prep.dataset.root, say=say)
        if len(prep_b.events) != len(prep.events) or not np.array_equal(prep_b.events.ts[rows], prep.events.ts[rows]):
            raise SchemaError(f"baseline {baseline_dir}: its prepared events differ from the model's; both must read the same dataset")
        beyond_b, s_b = evaluate_beyond(art_b, prep_b, n_users=n_users, rows=rows, seed=seed, say=say)
        data["baseline"] = {"dir": str(baseline_dir), "version": art_b.version, "beyond": beyond_b}
        if s_b is not None and s_m is not None:
            name = art_b.version if art_b.version != art.version else f"{art_b.version} (baseline)"
            scores[name] = s_b.probs
    elif s_m is not None:
        scores["popularity"] = _popularity_scores(prep, s_m)
        data["baseline"] = {"dir": None, "version": "popularity (smoothed train CTR)"}
    if s_m is not None:
        say(f"report: bootstrap over {len(np.unique(s_m.groups)):,} requests x {reps}")
        data["metrics"] = paired_bootstrap(s_m.labels, s_m.groups, scores, exam, reps=reps, seed=seed)
        data["scorers"] = list(scores)
    data["bench"] = read_bench(bench_dir)
    data["simulation"] = read_simulation(simulation, bench_dir)
    ope = Path(bench_dir) / "ope_coverage.json"
    data["ope"] = _read_json(ope) if ope.exists() else None
    data["seconds"] = round(time.perf_counter() - t0, 1)
    return data


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_bench(bench_dir: str | Path) -> dict[str, Any]:
    """The last ``feed`` and ``serve`` benchmark results (None when absent)."""
    root = Path(bench_dir)
    return {name: _read_json(root / f"{name}.json") if (root / f"{name}.json").exists() else None for name in ("feed", "serve")}


def read_simulation(path: str | Path | None, bench_dir: str | Path) -> dict[str, Any] | None:
    """CTR over time from the last simulation: ``path`` or the first of SIM_CANDIDATES in
    ``bench_dir``. Accepts a list of points or a dict holding one (keys ``days``/``steps``/...,
    each point with ``ctr``). None when there is none or it has no CTR series."""
    cands = [Path(path)] if path else [Path(bench_dir) / c for c in SIM_CANDIDATES]
    for p in cands:
        if p.exists():
            raw = _read_json(p)
            series = _ctr_series(raw)
            if series:
                return {"file": str(p), "series": series}
    return None


def _ctr_series(raw: Any) -> dict[str, list[float]] | None:
    if isinstance(raw, dict):
        for key in ("days", "steps", "rounds", "series", "history", "timeline", "cycles"):
            if key in raw:
                got = _ctr_series(raw[key])
                if got:
                    return got
        if isinstance(raw.get("ctr"), list):
            return {"x": list(range(len(raw["ctr"]))), "ctr": [float(v) for v in raw["ctr"]]}
        return None
    if isinstance(raw, list) and raw and all(isinstance(r, dict) and "ctr" in r for r in raw):
        xkey = next((k for k in ("day", "step", "round", "t", "cycle") if k in raw[0]), None)
        return {"x": [r[xkey] if xkey else i for i, r in enumerate(raw)], "ctr": [float(r["ctr"]) for r in raw],
                **({"arm": [str(r.get("arm", r.get("model", ""))) for r in raw]} if any("arm" in r or "model" in r for r in raw) else {})}
    return None


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(data: dict[str, Any]) -> dict[str, str]:
    """name -> PNG data URI, for every plot the data supports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    m = data.get("metrics")
    if m:
        names = data["scorers"]
        fig, axes = plt.subplots(1, len(m), figsize=(3.2 * len(m), 2.8))
        for ax, (metric, vals) in zip(np.atleast_1d(axes), m.items()):
            for j, n in enumerate(names):
                v = vals[n]
                ax.errorbar([j], [v["value"]], yerr=[[v["value"] - v["lo"]], [v["hi"] - v["value"]]], fmt="o", capsize=4)
            ax.set_xticks(range(len(names)), [n[:14] for n in names], rotation=20, fontsize=7)
            ax.set_title(metric, fontsize=9)
        fig.suptitle("metrics with 90% bootstrap intervals", fontsize=10, y=1.04)
        out["metrics"] = _png(fig)
        deltas = [(metric, k.split(":", 1)[1], v) for metric, vals in m.items() for k, v in vals.items() if k.startswith("delta:")]
        if deltas:
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(deltas)))
            for j, (metric, n, v) in enumerate(deltas):
                up, down = ("tab:red", "tab:green") if metric in LOWER_IS_BETTER else ("tab:green", "tab:red")
                color = up if v["lo"] > 0 else down if v["hi"] < 0 else "tab:gray"
                ax.errorbar([v["value"]], [j], xerr=[[v["value"] - v["lo"]], [v["hi"] - v["value"]]], fmt="o", capsize=4, color=color)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(deltas)), [f"{metric} vs {n[:18]}" for metric, n, _ in deltas], fontsize=8)
            ax.set_title("model minus baseline (90% paired bootstrap)", fontsize=10)
            out["deltas"] = _png(fig)
    curves = [(data[k]["version"], data[k]["beyond"]["accuracy"]["calibration_curve"]) for k in ("model", "baseline")
              if data.get(k) and data[k].get("beyond") and data[k]["beyond"].get("accuracy")]
    if curves:
        fig, ax = plt.subplots(figsize=(4, 4))
        hi = max(max(c["pred"] + c["obs"]) for _, c in curves) * 1.05
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="perfect")
        for name, c in curves:
            ax.plot(c["pred"], c["obs"], "o-", label=name[:24])
        ax.set_xlabel("predicted p(click)")
        ax.set_ylabel("observed click rate")
        ax.set_title("calibration (test impressions)", fontsize=10)
        ax.legend(fontsize=7)
        out["calibration"] = _png(fig)
    lor = [(data[k]["version"], data[k]["beyond"]["served"]) for k in ("model", "baseline")
           if data.get(k) and data[k].get("beyond") and data[k]["beyond"].get("served", {}).get("lorenz_exposure")]
    if lor:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="equal exposure")
        for name, sv in lor:
            x, y = lorenz_curve(np.asarray(sv["lorenz_exposure"]))
            ax.plot(x, y, label=f"{name[:20]} (Gini {sv['creator_exposure_gini']:.2f})")
        ax.set_xlabel("share of creators (least exposed first)")
        ax.set_ylabel("share of exposure")
        ax.set_title("creator exposure Lorenz curve", fontsize=10)
        ax.legend(fontsize=7)
        out["lorenz"] = _png(fig)
    feed = (data.get("bench") or {}).get("feed")
    stages = ((feed or {}).get("in_process") or {}).get("stages_ms")
    if stages:
        names = list(stages)
        fig, ax = plt.subplots(figsize=(6, 3))
        xs = np.arange(len(names))
        for j, q in enumerate(("p50", "p90", "p99")):
            ax.bar(xs + (j - 1) * 0.27, [stages[n].get(q, np.nan) for n in names], width=0.27, label=q)
        ax.set_xticks(xs, names, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(f"feed latency by stage, last bench ({feed.get('created_utc', '?')})", fontsize=10)
        ax.legend(fontsize=7)
        out["latency"] = _png(fig)
    serve = (data.get("bench") or {}).get("serve")
    pts = _serve_points(serve)
    if pts:
        fig, ax = plt.subplots(figsize=(6, 3))
        for q in ("p50", "p99"):
            ax.plot([p["achieved"] for p in pts], [p[q] for p in pts], "o-", label=q)
        ax.set_xlabel("achieved requests/s")
        ax.set_ylabel("latency ms")
        ax.set_yscale("log")
        ax.set_title("HTTP latency under load, last serve bench", fontsize=10)
        ax.legend(fontsize=7)
        out["serve"] = _png(fig)
    sim = data.get("simulation")
    if sim:
        s = sim["series"]
        fig, ax = plt.subplots(figsize=(6, 3))
        if "arm" in s:
            for arm in sorted(set(s["arm"])):
                idx = [i for i, a in enumerate(s["arm"]) if a == arm]
                ax.plot([s["x"][i] for i in idx], [s["ctr"][i] for i in idx], "o-", label=arm or "all")
            ax.legend(fontsize=7)
        else:
            ax.plot(s["x"], s["ctr"], "o-")
        ax.set_ylabel("CTR")
        ax.set_title(f"CTR over time ({Path(sim['file']).name})", fontsize=10)
        out["ctr_time"] = _png(fig)
    ope = data.get("ope")
    if ope and ope.get("runs"):
        runs = ope["runs"]
        fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
        for ax, name in zip(axes, ("ips", "snips", "dr")):
            rel = [(r["estimates"][name]["lo"] / r["truth"], r["estimates"][name]["value"] / r["truth"],
                    r["estimates"][name]["hi"] / r["truth"]) for r in runs if name in r["estimates"]]
            for j, (lo, v, hi) in enumerate(rel):
                ax.plot([j, j], [lo, hi], color="tab:blue" if lo <= 1 <= hi else "tab:red", lw=1.5)
                ax.plot([j], [v], "k.", ms=3)
            ax.axhline(1.0, color="k", lw=0.8)
            cov = ope["summary"][name]["coverage"]
            ax.set_title(f"{name}: {cov:.0%} cover", fontsize=9)
            ax.set_xlabel("seeded world")
        axes[0].set_ylabel("estimate / truth")
        fig.suptitle(f"off-policy {int(ope['level'] * 100)}% intervals vs simulated truth", fontsize=10)
        out["ope"] = _png(fig)
    return out


def _serve_points(serve: Any) -> list[dict[str, float]]:
    """(achieved rps, p50, p99) points from a serve bench result, whatever its nesting."""
    pts = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            lat = x.get("latency_ms") if isinstance(x.get("latency_ms"), dict) else x
            ach = x.get("achieved_rps", x.get("achieved"))
            p50, p99 = lat.get("p50", lat.get("p50_ms")), lat.get("p99", lat.get("p99_ms"))
            if isinstance(ach, (int, float)) and isinstance(p50, (int, float)) and isinstance(p99, (int, float)):
                pts.append({"achieved": float(ach), "p50": float(p50), "p99": float(p99)})
                return
            for k, v in x.items():
                if k != "bare_asgi":  # the bench's no-app baseline, not the service
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(serve)
    return sorted(pts, key=lambda p: p["achieved"])


# --------------------------------------------------------------------------- HTML


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(p: dict[str, str], key: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{p[key]}">' if key in p else f"<p class=muted>({html.escape(alt)}: no data)</p>"


def _examination_note(data: dict[str, Any]) -> str:
    """Which examination curve the debiased metrics used (``beyond.click_model_block``), in words."""
    cm = ((((data.get("model") or {}).get("beyond") or {}).get("accuracy") or {}).get("click_model")) or {}
    if not cm:
        return "the examination curve of the train impressions"
    theta = ", ".join(f"{t:.3f}" for t in cm.get("theta", [])[:10])
    if cm.get("method") == "harvest":
        head = "examination harvested from the logging policy's randomised feeds on the train impressions"
    else:
        head = "examination from a position-based click model fitted by EM on the train impressions"
    why = f" ({cm['reason']})" if cm.get("reason") else ""
    return f"{head}{why}; theta by position [{theta}]"


def render_html(data: dict[str, Any]) -> str:
    p = plots(data)
    sections = []
    m = data.get("metrics")
    if m:
        names = data["scorers"]
        rows = []
        for metric, vals in m.items():
            for n in names:
                v = vals[n]
                rows.append([metric, n, v["value"], f"[{v['lo']:.4f}, {v['hi']:.4f}]", ""])
            for k, v in vals.items():
                if k.startswith("delta:"):
                    sig = "better" if (v["lo"] > 0) != (metric == "ece") and (v["lo"] > 0 or v["hi"] < 0) else \
                          "worse" if (v["lo"] > 0 or v["hi"] < 0) else "no clear difference"
                    rows.append([metric, f"model - {k[6:]}", v["value"], f"[{v['lo']:.4f}, {v['hi']:.4f}]", sig])
        sections.append("<h2>Ranking metrics and deltas</h2><p>Test impressions of the time split, 90% intervals from "
                        f"{BOOTSTRAP} request-level bootstrap resamples; deltas are paired (same resample). "
                        "debiased_ndcg@10 weights each click by 1 / examination of its slot, "
                        + html.escape(_examination_note(data)) + ". For ECE lower is better.</p>"
                        + _table(["metric", "scorer", "value", "90% interval", "verdict"], rows)
                        + _img(p, "deltas", "metric deltas") + _img(p, "metrics", "metrics"))
    segs = []
    for who in ("model", "baseline"):
        acc = ((data.get(who) or {}).get("beyond") or {}).get("accuracy")
        if acc:
            for seg, b in {"all": acc["overall"], **acc["segments"]}.items():
                segs.append([data[who]["version"], seg, b.get("n_impressions"), b.get("ctr"), b.get("auc"), b.get("ndcg@10"),
                             b.get("debiased_auc"), b.get("debiased_ndcg@10"), b.get("ece")])
    if segs:
        sections.append("<h2>Segments</h2><p>Users by train clicks (new: 0; heavy: top quintile and at least 5); items cold "
                        "with fewer than 20 train impressions.</p>"
                        + _table(["model", "segment", "impressions", "CTR", "AUC", "nDCG@10", "debiased AUC", "debiased nDCG@10", "ECE"], segs)
                        + _img(p, "calibration", "calibration curve"))
    served = []
    keys = ["catalog_coverage", "intra_list_diversity", "novelty_bits", "freshness_mean_age_h", "freshness_share_under_24h",
            "creator_exposure_gini", "group_disparity"]
    for who in ("model", "baseline"):
        sv = ((data.get(who) or {}).get("beyond") or {}).get("served")
        if sv:
            served.append([data[who]["version"], sv.get("n_feeds")] + [sv.get(k) for k in keys]
                          + [", ".join(f"{g}: {v['exposure_share']:.2f} of exposure / {v['catalog_share']:.2f} of items"
                                       for g, v in (sv.get("creator_groups") or {}).items())])
    if served:
        sections.append("<h2>What is served (beyond accuracy)</h2><p>Top-10 feeds from the Recommender for a sample of "
                        "test users (half new or nearly new), at the end of the data.</p>"
                        + _table(["model", "feeds"] + keys + ["creator groups"], served) + _img(p, "lorenz", "Lorenz curve"))
    sections.append("<h2>Latency (last bench)</h2>" + _img(p, "latency", "stage latency") + _img(p, "serve", "serve bench"))
    sim = data.get("simulation")
    sections.append("<h2>CTR over time (last simulation)</h2>" + (_img(p, "ctr_time", "CTR over time") if sim else
                    "<p class=muted>No simulation output found (benchmarks/results/simulate.json); run the simulator and "
                    "pass --simulation FILE.</p>"))
    ope = data.get("ope")
    if ope:
        rows = [[k, f"{v['covered']}/{v['runs']}", v["coverage"], v["mean_bias"], v["rmse"], v["mean_rel_width"]] for k, v in ope["summary"].items()]
        sections.append(f"<h2>Off-policy estimators vs simulated truth</h2><p><code>{html.escape(str(ope.get('command', '')))}</code></p>"
                        + _table(["estimator", "covered", "coverage", "mean bias", "RMSE", "mean width / truth"], rows)
                        + _img(p, "ope", "OPE coverage"))
    title = f"feedrank report: {data['model']['version']}"
    head = (f"<h1>{html.escape(title)}</h1><p>model <code>{html.escape(data['model']['dir'])}</code>; baseline "
            f"<code>{html.escape(str((data.get('baseline') or {}).get('version')))}</code>; data <code>{html.escape(data['data_dir'])}</code>; "
            f"{data['n_test_impressions']:,} test impressions; made {data['created_utc']} in {data.get('seconds', '?')} s.</p>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;margin:.5em 0;display:block}.muted{color:#888}"
             "h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{head}{''.join(sections)}</body></html>")


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar: the data minus bulky arrays."""
    out = json.loads(json.dumps(data, default=float))
    for who in ("model", "baseline"):
        sv = ((out.get(who) or {}).get("beyond") or {}).get("served")
        if sv:
            sv.pop("lorenz_exposure", None)
    if out.get("ope"):
        out["ope"].pop("runs", None)
    return out


def write_report(out: str | Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and ``out`` with suffix .json; returns both paths."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data), encoding="utf-8")
    side = path.with_suffix(".json")
    summary = _summary(data)
    summary["html"] = str(path.resolve())
    side.write_text(json.dumps(summary, indent=1, sort_keys=True, default=float))
    return path, side
