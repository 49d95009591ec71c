"""Off-policy estimates validated against the synthetic world's simulated truth.

The question: "what top-slot click rate would a new ranking policy get?", answered from the
logging policy's feeds with their logged propensities, and checked against the truth that
only a simulated world knows.

* Logged data: the slot-0 impression of every session (item, propensity = the logging
  policy's probability of that item at the top, click or not). In the synthetic world
  P(click at slot 0) = exam(0) a(u, i, t) = a(u, i, t), so the click is a draw of the reward.
* Target policy (``TargetPolicy``): a new ranker whose score for item j is the true
  attractiveness with a per-item log-normal error, ``s_j = a(u, j, t) exp(noise eps_j)``;
  it shows j at the top with probability ``pi(j | u, t) ∝ s_j ** beta`` over the live items.
* Truth: ``V = mean over all sessions of sum_j pi(j | u, t) a(u, j, t)``: exact in the action
  and the click, computed from the world's formulas over every session of the period (the
  population the log was sampled from). The same mean over the logged sessions only
  (``truth_logged_sessions``: what these very sessions would have clicked) is reported too;
  covering it is easier, since it removes the sampling of contexts.
* Estimates: IPS, SNIPS and DR (``ope.py``) from a random ``sample`` share of the sessions
  (the "log"). DR's reward model is a position-based click model fitted by EM
  (``click_models.fit_pbm``) on the log's impressions at all positions, cross-fitted over two
  folds so a round's reward never trains the model that corrects it.

``coverage_check`` repeats this over seeds (a new world, log and target noise per seed) and
reports, per estimator, how often the stated interval covered the truth.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedrank.data.dataset import ts_to_seconds
from feedrank.data.synth import WorldConfig, WorldTruth, generate_world, parse_ids
from feedrank.data.synth.world import World
from feedrank.errors import SchemaError
from feedrank.evaluation.click_models import fit_pbm, harvest_position_bias
from feedrank.evaluation.ope import DEFAULT_METHOD, ESTIMATORS, INTERVAL_METHODS, estimate_all
from feedrank.training.common import progress

CHUNK_SESSIONS = 2048


@dataclass(frozen=True)
class TargetPolicy:
    """pi(j | u, t) ∝ (a(u, j, t) exp(noise eps_j)) ** beta over the live items; eps ~ N(0, 1)
    per item, drawn from ``seed``."""

    beta: float = 2.0
    noise: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class Sessions:
    """Slot-0 rounds, one per session. Arrays (S,): user, item (indices), ts (epoch s),
    propensity, click (0/1), request (int: r<n> -> n)."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    propensity: np.ndarray
    click: np.ndarray
    request: np.ndarray


@dataclass(frozen=True)
class OpeLog:
    """What the estimators of one run see, aligned (n,) arrays of the logged slot-0 rounds
    (reward, propensity, the target's probability of the logged item, the reward model's
    ``q_logged`` and ``dm``, user ids), and the truth (over all sessions, and over the logged ones)."""

    reward: np.ndarray
    propensity: np.ndarray
    target_prob: np.ndarray
    q_logged: np.ndarray
    dm: np.ndarray
    user: np.ndarray
    truth: float
    truth_logged: float


@dataclass(frozen=True)
class Impressions:
    """Every logged impression (all positions). Arrays (n,): request, item, position, click,
    propensity (the logging policy's sequential draw probability)."""

    request: np.ndarray
    item: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray


def read_log(dataset_dir: str | Path, world: World) -> tuple[Sessions, Impressions]:
    """Slot-0 rounds and all impressions (with their clicks) of a synthetic dataset."""
    path = Path(dataset_dir) / "events.parquet"
    t = pq.read_table(path, columns=["ts", "user_id", "item_id", "kind", "position", "request_id", "propensity"])
    kind = t.column("kind")
    imp = t.filter(pc.equal(kind, "impression"))
    clk = t.filter(pc.equal(kind, "click"))
    if imp.num_rows == 0:
        raise SchemaError(f"{path}: no impressions to evaluate")
    cfg = world.config

    def req(col) -> np.ndarray:
        return parse_ids(np.asarray(col.to_numpy(zero_copy_only=False), dtype=object), "r", 1 << 62, "request")

    i_req, c_req = req(imp.column("request_id")), req(clk.column("request_id"))
    i_pos = imp.column("position").to_numpy().astype(np.int64)
    c_pos = clk.column("position").to_numpy().astype(np.int64)
    K = int(max(i_pos.max(), c_pos.max() if len(c_pos) else 0) + 1)
    clicked = np.isin(i_req * K + i_pos, c_req * K + c_pos)
    i_item = parse_ids(imp.column("item_id").to_numpy(zero_copy_only=False), "i", cfg.n_items, "item")
    top = i_pos == 0
    i_prop = imp.column("propensity").to_numpy().astype(np.float64)
    sessions = Sessions(
        user=parse_ids(np.asarray(imp.column("user_id").to_numpy(zero_copy_only=False))[top], "u", cfg.n_users, "user"),
        item=i_item[top],
        ts=ts_to_seconds(imp.column("ts"))[top],
        propensity=i_prop[top],
        click=clicked[top].astype(np.float64),
        request=i_req[top],
    )
    return sessions, Impressions(request=i_req, item=i_item, position=i_pos, click=clicked.astype(np.float64),
                                 propensity=i_prop)


@dataclass(frozen=True)
class RewardModel:
    """q(u, j) = gamma[j] * mult[u, cat(j)], clipped to [0, 1]: a PBM item attractiveness
    (``gamma`` (N,)) times a shrunk per-user topic multiplier (``mult`` (U, C)): the user's
    clicks in a topic over those the item-only model expected there."""

    gamma: np.ndarray
    mult: np.ndarray
    item_cat: np.ndarray

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """users (B,) and items (B,) or (B, L). Returns q of the same shape as ``items``."""
        u = users.reshape((-1,) + (1,) * (items.ndim - 1))
        return np.clip(self.gamma[items] * self.mult[u, self.item_cat[items]], 0.0, 1.0)


def fit_reward_model(world: World, imps: Impressions, users_of_request: dict[int, int] | np.ndarray,
                     mask: np.ndarray, shrink: float = 2.0) -> tuple[RewardModel, np.ndarray]:
    """Fit q on the impressions selected by ``mask``. ``users_of_request`` maps request -> user
    index (an array indexed by request). Returns (model, fitted PBM theta)."""
    cfg = world.config
    pbm = fit_pbm(imps.item[mask], imps.position[mask], imps.click[mask], n_items=cfg.n_items)
    u = users_of_request[imps.request[mask]]
    c = world.item_cat[imps.item[mask]].astype(np.int64)
    key = u * cfg.n_categories + c
    expected = pbm.examination(imps.position[mask]) * pbm.gamma[imps.item[mask]]
    size = cfg.n_users * cfg.n_categories
    clicks = np.bincount(key, weights=imps.click[mask], minlength=size)
    exp_sum = np.bincount(key, weights=expected, minlength=size)
    mult = ((clicks + shrink) / (exp_sum + shrink)).reshape(cfg.n_users, cfg.n_categories)
    return RewardModel(pbm.gamma, mult, world.item_cat.astype(np.int64)), pbm.theta


def live_range(world: World, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index range [lo, hi) of the items live at session times ``ts`` (S,) (epoch s), computed
    exactly as the logging policy does (``policy.LoggingPolicy.sample``): in integer
    milliseconds, ``t - max_age < published <= t``. Float seconds could differ from it for an
    item published within half a millisecond of a boundary, and the target policy would then
    put mass on an item the logging policy could not show (or the reverse)."""
    pub_ms = np.round(world.item_pub * 1000.0).astype(np.int64)
    t_ms = np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64)
    max_age_ms = int(round(world.config.max_age_s * 1000.0))
    return (np.searchsorted(pub_ms, t_ms - max_age_ms, side="right"), np.searchsorted(pub_ms, t_ms, side="right"))


def target_rows(world: World, policy: TargetPolicy, user: np.ndarray, ts: np.ndarray, item: np.ndarray,
                q: RewardModel | None = None) -> dict[str, np.ndarray]:
    """For sessions (S,): pi of the logged top item, the true value sum_j pi_j a_j, and (when
    a reward model ``q`` is given) the direct-method term sum_j pi_j q(u, j). Returns (S,) arrays."""
    cfg = world.config
    eps = np.random.default_rng(np.random.SeedSequence([policy.seed, 808])).standard_normal(cfg.n_items)
    lo, hi = live_range(world, ts)
    S = len(user)
    out = {"pi_logged": np.zeros(S), "truth": np.zeros(S), "dm": np.zeros(S)}
    for a0 in range(0, S, CHUNK_SESSIONS):
        b0 = min(a0 + CHUNK_SESSIONS, S)
        lo_c, n_c = lo[a0:b0], hi[a0:b0] - lo[a0:b0]
        if np.any(n_c <= 0):
            raise SchemaError("a logged session has no live item (is this the world the log came from?)")
        L = int(n_c.max())
        col = np.arange(L)[None, :]
        mask = col < n_c[:, None]
        idx = np.where(mask, lo_c[:, None] + col, lo_c[:, None])
        B = b0 - a0
        a = world.attractiveness(np.repeat(user[a0:b0], L), idx.ravel(), np.repeat(ts[a0:b0], L)).reshape(B, L)
        logit = policy.beta * (np.log(np.maximum(a, 1e-300)) + policy.noise * eps[idx])
        logit = np.where(mask, logit, -np.inf)
        logit -= logit.max(axis=1, keepdims=True)
        pi = np.exp(logit)
        pi /= pi.sum(axis=1, keepdims=True)
        rel = item[a0:b0] - lo_c
        if np.any((rel < 0) | (rel >= n_c)):
            raise SchemaError("a logged top item was not live at its session time")
        out["pi_logged"][a0:b0] = pi[np.arange(B), rel]
        out["truth"][a0:b0] = np.sum(pi * a, axis=1)
        if q is not None:
            out["dm"][a0:b0] = np.sum(np.where(mask, pi * q(user[a0:b0], idx), 0.0), axis=1)
    return out


def evaluate_log(dataset_dir: str | Path, policy: TargetPolicy = TargetPolicy(), *, sample: float = 0.5,
                 level: float = 0.9, seed: int = 0, cluster_by_user: bool = True,
                 method: str = DEFAULT_METHOD, on_log: Callable[[OpeLog], None] | None = None) -> dict[str, Any]:
    """Estimates (IPS, SNIPS, DR, DM) of the target policy's top-slot CTR from a random
    ``sample`` share of a synthetic dataset's sessions, and the simulated truth over all.
    Intervals are cluster-robust over users unless ``cluster_by_user`` is False; the main one
    is ``method``'s, and every method's interval is kept under ``intervals``. Also: the
    examination curve fitted by EM and the one harvested from the log's randomisation.
    ``on_log``, when given, receives the run's arrays (``OpeLog``) before any interval is built."""
    if method not in INTERVAL_METHODS:
        raise SchemaError(f"method: expected one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    if not 0.0 < sample <= 1.0:
        raise SchemaError(f"sample: expected a share in (0, 1], got {sample}")
    world = WorldTruth.load(dataset_dir).world
    sess, imps = read_log(dataset_dir, world)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 909]))
    S = len(sess.user)
    keep = np.sort(rng.choice(S, size=max(2, int(round(sample * S))), replace=False)) if sample < 1 else np.arange(S)
    fold = rng.integers(0, 2, len(keep))
    # reward model per fold: fitted on the other fold's impressions (all positions)
    q_logged = np.zeros(len(keep))
    dm = np.zeros(len(keep))
    pi_logged = np.zeros(len(keep))
    pbm_thetas = []
    user_of_req = np.zeros(int(sess.request.max()) + 1, dtype=np.int64)
    user_of_req[sess.request] = sess.user
    for f in (0, 1):
        rows = keep[fold == f]
        m = np.isin(imps.request, sess.request[keep[fold != f]])
        q, theta = fit_reward_model(world, imps, user_of_req, m)
        pbm_thetas.append(theta)
        tr = target_rows(world, policy, sess.user[rows], sess.ts[rows], sess.item[rows], q=q)
        sel = fold == f
        q_logged[sel] = q(sess.user[rows], sess.item[rows])
        dm[sel] = tr["dm"]
        pi_logged[sel] = tr["pi_logged"]
    truth_rows = target_rows(world, policy, sess.user, sess.ts, sess.item)["truth"]
    clusters = sess.user[keep] if cluster_by_user else None  # one user's sessions are correlated
    args = (sess.click[keep], sess.propensity[keep], pi_logged, q_logged, dm)
    if on_log is not None:
        on_log(OpeLog(*args, sess.user[keep], float(truth_rows.mean()), float(truth_rows[keep].mean())))
    by_method, interval_errors = {}, {}
    for m in INTERVAL_METHODS:  # every method is recorded; one that cannot be built on this log is noted, not fatal
        try:
            by_method[m] = estimate_all(*args, level=level, clusters=clusters, method=m)
        except SchemaError as exc:
            if m == method:
                raise
            interval_errors[m] = str(exc)
    est = by_method[method]
    truth = float(truth_rows.mean())
    truth_logged = float(truth_rows[keep].mean())  # the same value on the logged sessions only
    logging_truth = float(world.attractiveness(sess.user, sess.item, sess.ts).mean())
    theta = np.mean([t[: min(len(x) for x in pbm_thetas)] for t in pbm_thetas], axis=0)
    true_theta = world.examination(np.arange(len(theta)))
    logged = np.isin(imps.request, sess.request[keep])
    harvest = harvest_position_bias(imps.request[logged], imps.position[logged], imps.propensity[logged],
                                    imps.click[logged], max_position=len(theta) - 1, level=level)
    return {
        "truth": truth,
        "truth_logged_sessions": truth_logged,
        "logging_truth": logging_truth,
        "logged_ctr": float(sess.click[keep].mean()),
        "n_sessions": int(S),
        "n_logged": int(len(keep)),
        "level": level,
        "cluster_by_user": cluster_by_user,
        "n_users": int(len(np.unique(sess.user[keep]))),
        "policy": asdict(policy),
        "method": method,
        "estimates": {k: {**v.to_dict(), "covers": v.covers(truth), "covers_logged_sessions": v.covers(truth_logged),
                          "intervals": {m: {"lo": by_method[m][k].lo, "hi": by_method[m][k].hi,
                                            "covers": by_method[m][k].covers(truth),
                                            "crossed": by_method[m][k].crossed} for m in by_method}}
                      for k, v in est.items()},
        "interval_errors": interval_errors,
        "pbm_theta": theta.round(4).tolist(),
        "harvest_theta": harvest.theta.round(4).tolist(),
        "harvest_lo": harvest.lo.round(4).tolist(),
        "harvest_hi": harvest.hi.round(4).tolist(),
        "true_theta": true_theta.round(4).tolist(),
    }


def coverage_check(seeds: list[int], world: dict[str, Any] | None = None, policy: TargetPolicy = TargetPolicy(),
                   *, sample: float = 0.5, level: float = 0.9, workdir: str | Path | None = None,
                   show_progress: bool = True, on_run: Callable[[dict], None] | None = None,
                   method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Per seed: a new world (``WorldConfig(**world, seed=s)``), its log, a target policy with
    new item noise; estimate and compare with the truth. Returns the runs and a summary per
    estimator (coverage share, mean bias, RMSE, mean interval width)."""
    world = dict(world or {})
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="feedrank-ope-", dir=workdir))
    try:
        for s in progress(seeds, desc="ope seeds", enabled=show_progress, unit="world"):
            cfg = WorldConfig(**{**world, "seed": int(s)})
            out = tmp / f"w{s}"
            generate_world(out, cfg, progress=False)
            pol = TargetPolicy(beta=policy.beta, noise=policy.noise, seed=int(s))
            r = evaluate_log(out, pol, sample=sample, level=level, seed=int(s), method=method)
            r["seed"] = int(s)
            runs.append(r)
            shutil.rmtree(out, ignore_errors=True)
            if on_run is not None:
                on_run(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"level": level, "sample": sample, "method": method, "world": world,
            "policy": {"beta": policy.beta, "noise": policy.noise}, "n_runs": len(runs), "summary": summarize(runs),
            "position_bias": summarize_position_bias(runs), "weights": summarize_weights(runs), "runs": runs}


def coverage_interval(covered: int, runs: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for a coverage share from ``covered`` of ``runs`` (how precisely
    a finite number of seeded runs pins the true coverage down)."""
    from scipy.stats import beta

    a = (1.0 - level) / 2.0
    lo = 0.0 if covered == 0 else float(beta.ppf(a, covered, runs - covered + 1))
    hi = 1.0 if covered == runs else float(beta.ppf(1.0 - a, covered + 1, runs - covered))
    return lo, hi


def summarize_weights(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Do the importance weights average to 1, as exact propensities promise? Per run, the
    logged mean weight is IPS / SNIPS and its standard error follows from the ESS
    (``sum w^2 / n = mean(w)^2 n / ESS``); across runs z = (mean(w) - 1) / se should be
    roughly N(0, 1). A target policy putting mass where the logging policy cannot go (a
    live-set mismatch) or wrong propensities show up as a shifted mean."""
    z, means = [], []
    for r in runs:
        e = r["estimates"].get("ips"), r["estimates"].get("snips")
        if e[0] is None or e[1] is None or e[1]["value"] <= 0:
            continue
        n, ess = e[0]["n"], e[0]["ess"]
        m = e[0]["value"] / e[1]["value"]
        var = m * m * (n / ess - 1.0)
        if var > 0:
            means.append(m)
            z.append((m - 1.0) / np.sqrt(var / n))
    if not z:
        return {}
    return {"mean_weight": float(np.mean(means)), "z_mean": float(np.mean(z)), "z_sd": float(np.std(z, ddof=1)) if len(z) > 1 else 0.0,
            "runs": len(z)}


def summarize_position_bias(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean absolute error of the EM and the harvested examination curves against the world's,
    and how often each harvested interval covered the true theta."""
    rs = [r for r in runs if "harvest_theta" in r]
    if not rs:
        return {}
    true = np.array([r["true_theta"] for r in rs])
    em = np.array([r["pbm_theta"] for r in rs])
    hv = np.array([r["harvest_theta"] for r in rs])
    cov = (np.array([r["harvest_lo"] for r in rs]) <= true) & (true <= np.array([r["harvest_hi"] for r in rs]))
    return {"true_theta": true.mean(axis=0).round(4).tolist(),
            "em_mean_theta": em.mean(axis=0).round(4).tolist(),
            "harvest_mean_theta": hv.mean(axis=0).round(4).tolist(),
            "em_mean_abs_error": float(np.abs(em - true)[:, 1:].mean()),
            "harvest_mean_abs_error": float(np.abs(hv - true)[:, 1:].mean()),
            "harvest_interval_coverage": float(cov[:, 1:].mean())}


def with_main_interval(result: dict[str, Any], method: str) -> dict[str, Any]:
    """A ``coverage_check`` output with ``method``'s recorded interval as the main one (each
    run keeps every method's interval, so no world needs re-running): every estimate's
    ``lo``/``hi``/``covers``/``covers_logged_sessions``/``method``, the runs' and the
    output's ``method``, and the summary are rewritten. Returns a new dict."""
    if method not in INTERVAL_METHODS:
        raise SchemaError(f"method: expected one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    runs = []
    for r in result.get("runs", []):
        ests = {}
        for name, e in r["estimates"].items():
            iv = (e.get("intervals") or {}).get(method)
            if iv is None:
                raise SchemaError(f"seed {r.get('seed')}: {name} has no recorded {method!r} interval "
                                  f"(written before that method existed?)")
            ests[name] = {**e, "lo": iv["lo"], "hi": iv["hi"], "covers": bool(iv["lo"] <= r["truth"] <= iv["hi"]),
                          "method": method}
            if "truth_logged_sessions" in r:
                ests[name]["covers_logged_sessions"] = bool(iv["lo"] <= r["truth_logged_sessions"] <= iv["hi"])
        runs.append({**r, "estimates": ests, "method": method})
    if not runs:
        raise SchemaError("not a `feedrank ope check` output (no runs)")
    out = {**result, "runs": runs, "method": method, "summary": summarize(runs)}
    if "command" in out and "--interval" in out["command"]:
        head, _, tail = out["command"].partition("--interval ")
        rest = tail.split(" ", 1)
        out["command"] = head + f"--interval {method}" + (" " + rest[1] if len(rest) > 1 else "")
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Coverage share, bias, RMSE, mean width (absolute and relative to the truth) per estimator;
    per recorded interval method (``coverage_by_method``): coverage, mean width (absolute and
    relative), and how many runs had the truth below / above the interval."""
    out: dict[str, dict[str, float]] = {}
    for name in (*ESTIMATORS, "dm"):
        rs = [r for r in runs if name in r["estimates"]]
        if not rs:
            continue
        truth = np.array([r["truth"] for r in rs])
        val = np.array([r["estimates"][name]["value"] for r in rs])
        width = np.array([r["estimates"][name]["hi"] - r["estimates"][name]["lo"] for r in rs])
        cov = np.array([r["estimates"][name]["covers"] for r in rs], dtype=np.float64)
        cov_logged = np.array([r["estimates"][name].get("covers_logged_sessions", np.nan) for r in rs], dtype=np.float64)
        by_method = {}
        for m in INTERVAL_METHODS:
            iv = [r["estimates"][name].get("intervals", {}).get(m) for r in rs]
            if all(x is not None for x in iv):
                lo_m, hi_m = np.array([x["lo"] for x in iv]), np.array([x["hi"] for x in iv])
                by_method[m] = {"coverage": float(np.mean([x["covers"] for x in iv])),
                                "mean_width": float(np.mean(hi_m - lo_m)),
                                "mean_rel_width": float(np.mean((hi_m - lo_m) / truth)),
                                "below": int(np.sum(truth < lo_m)), "above": int(np.sum(truth > hi_m))}
        lo_cov, hi_cov = coverage_interval(int(cov.sum()), len(rs))
        out[name] = {
            "coverage": float(cov.mean()),
            "coverage_ci95": [lo_cov, hi_cov],
            "coverage_by_method": by_method,
            "coverage_of_logged_sessions_truth": float(cov_logged.mean()),
            "covered": int(cov.sum()),
            "runs": len(rs),
            "mean_bias": float(np.mean(val - truth)),
            "rmse": float(np.sqrt(np.mean((val - truth) ** 2))),
            "mean_width": float(width.mean()),
            "mean_rel_width": float(np.mean(width / truth)),
        }
        se = np.array([r["estimates"][name]["stderr"] for r in rs])
        err = val - truth
        if len(rs) > 2 and np.all(se > 0):
            z = err / se  # studentised errors: ~N(0, 1) when the intervals are right
            out[name].update({"rmse_over_rms_stderr": float(np.sqrt(np.mean(err**2) / np.mean(se**2))),
                              "corr_error_stderr": float(np.corrcoef(err, se)[0, 1]) if np.std(se) > 0 else None,
                              "z_q05": float(np.quantile(z, 0.05)), "z_q95": float(np.quantile(z, 0.95))})
    return out


def position_bias_report(dataset_dir: str | Path, *, level: float = 0.9, n_positions: int = 10) -> dict[str, Any]:
    """Examination per position of a dataset's log, harvested from its randomisation
    (``click_models.harvest_position_bias``) and fitted by EM (``fit_pbm``), with the true
    curve when the dataset is a synthetic world (it has ``truth/``)."""
    path = Path(dataset_dir) / "events.parquet"
    if not path.exists():
        raise SchemaError(f"{path}: no events file (is {dataset_dir} a dataset folder?)")
    t = pq.read_table(path, columns=["item_id", "kind", "position", "request_id", "propensity"])
    imp = t.filter(pc.equal(t.column("kind"), "impression"))
    clk = t.filter(pc.equal(t.column("kind"), "click"))
    if imp.num_rows == 0:
        raise SchemaError(f"{path}: no impressions")
    for name in ("position", "request_id", "propensity"):
        if imp.column(name).null_count:
            raise SchemaError(f"{path}: {imp.column(name).null_count} impression(s) without {name}")
    req_s = np.asarray(imp.column("request_id").to_numpy(zero_copy_only=False), dtype=object)
    uniq, req = np.unique(req_s, return_inverse=True)
    pos = imp.column("position").to_numpy().astype(np.int64)
    c_req = np.searchsorted(uniq, np.asarray(clk.column("request_id").to_numpy(zero_copy_only=False), dtype=object))
    c_req = np.minimum(c_req, len(uniq) - 1)
    c_pos = clk.column("position").to_numpy().astype(np.int64)
    K = int(max(pos.max(), c_pos.max() if len(c_pos) else 0) + 1)
    click = np.isin(req * K + pos, c_req * K + c_pos).astype(np.float64)
    _, item = np.unique(np.asarray(imp.column("item_id").to_numpy(zero_copy_only=False), dtype=object), return_inverse=True)
    prop = imp.column("propensity").to_numpy().astype(np.float64)
    harvest = harvest_position_bias(req, pos, prop, click, max_position=n_positions - 1, level=level)
    em = fit_pbm(item, pos, click)
    k = len(harvest.theta)
    out: dict[str, Any] = {
        "n_impressions": int(imp.num_rows), "n_feeds": int(len(uniq)), "level": level,
        "harvest_theta": harvest.theta.round(4).tolist(), "harvest_lo": harvest.lo.round(4).tolist(),
        "harvest_hi": harvest.hi.round(4).tolist(), "harvest_pairs": harvest.pairs.tolist(),
        "em_theta": em.theta[:k].round(4).tolist(), "true_theta": None,
    }
    if (Path(dataset_dir) / "truth").exists():
        out["true_theta"] = WorldTruth.load(dataset_dir).world.examination(np.arange(k)).round(4).tolist()
    return out
