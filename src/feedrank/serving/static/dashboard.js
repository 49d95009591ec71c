// feedrank dashboard: polls the read-only JSON endpoints under /dashboard/api/.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "n/a" : Number(v).toFixed(d);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function refreshLive() {
  try {
    const d = await getJSON("/dashboard/api/live");
    $("live-rps").textContent = fmt(d.rps, 1);
    $("live-p50").textContent = d.p50_ms === null ? "n/a" : `${fmt(d.p50_ms, 1)} ms`;
    $("live-p99").textContent = d.p99_ms === null ? "n/a" : `${fmt(d.p99_ms, 1)} ms`;
    $("live-events").textContent = fmt(d.events_per_s, 1);
    $("live-lag").textContent = d.counter_lag === null ? "n/a" : `${fmt(d.counter_lag, 0)} ev` +
      (d.consumer_heartbeat_age_s === null ? "" : ` · ${fmt(d.consumer_heartbeat_age_s, 1)} s`);
    $("live-feeds").textContent = fmt(d.feeds_total, 0);
    const tiers = Object.entries(d.tier_mix);
    $("live-tiers").textContent = tiers.length ? tiers.map(([t, v]) => `${t} ${(100 * v).toFixed(0)}%`).join(" · ") : "no feeds yet";
    $("uptime").textContent = `${fmt(d.uptime_s, 0)} s`;
    const el = $("live-updated");
    el.dataset.count = String(Number(el.dataset.count) + 1);
    el.textContent = `updated ${new Date(d.ts * 1000).toLocaleTimeString()} (window ${fmt(d.window_s, 1)} s)`;
  } catch (e) {
    $("live-updated").innerHTML = `<span class="error">${esc(e.message)}</span>`;
  }
}

function renderFeed(d) {
  $("feed-meta").textContent = `${d.items.length} items for ${d.user_id} · tier ${d.tier} · model ${d.model_version}` +
    (d.arm ? ` · arm ${d.arm}` : "") + ` · features ${d.features} · total ${fmt(d.timings_ms.total, 2)} ms`;
  const maxScore = Math.max(1e-9, ...d.items.map((it) => Math.abs(it.score)));
  $("feed").querySelector("tbody").innerHTML = d.items.map((it) => `<tr class="feed-item" data-item="${esc(it.item_id)}">
      <td class="num">${it.rank}</td><td>${esc(it.item_id)}</td><td>${esc(it.title)}</td><td>${esc(it.category)}</td>
      <td><span class="src ${esc(it.source)}">${esc(it.source)}</span></td>
      <td class="num">${fmt(it.score, 4)} <span class="bar" style="width:${Math.round(40 * Math.abs(it.score) / maxScore)}px"></span></td>
      <td>${it.explain.map((x) => `${esc(x.feature)} ${x.contribution >= 0 ? "+" : ""}${fmt(x.contribution, 3)}`).join(", ")}</td></tr>`).join("");
  const f = d.funnel || {};
  const srcRows = Object.entries(f).filter(([k]) => k.startsWith("source:"));
  const cand = srcRows.reduce((a, [, v]) => a + v, 0);
  const maxF = Math.max(1, cand);
  const row = (name, v) => `<tr><td>${esc(name)}</td><td class="num">${v}</td><td><span class="bar" style="width:${Math.round(120 * v / maxF)}px"></span></td></tr>`;
  $("funnel").querySelector("tbody").innerHTML = srcRows.map(([k, v]) => row(k.slice(7), v)).join("") +
    row("candidates", cand) + row("ranked", f.ranked ?? 0) + row("shown", f.shown ?? d.items.length);
  const stages = Object.entries(d.timings_ms).filter(([k]) => k !== "total");
  const maxS = Math.max(1e-9, ...stages.map(([, v]) => v));
  $("stages").querySelector("tbody").innerHTML = stages.map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td class="num">${fmt(v, 2)} ms</td><td><span class="bar" style="width:${Math.round(120 * v / maxS)}px"></span></td></tr>`).join("");
}

async function showFeed(ev) {
  if (ev) ev.preventDefault();
  const user = $("user-id").value.trim();
  if (!user) return;
  const k = $("feed-k").value || 10;
  $("feed-meta").textContent = "loading…";
  try {
    renderFeed(await getJSON(`/dashboard/api/feed?user_id=${encodeURIComponent(user)}&k=${encodeURIComponent(k)}`));
    history.replaceState(null, "", `?user_id=${encodeURIComponent(user)}`);
  } catch (e) {
    $("feed-meta").innerHTML = `<span class="error">${esc(e.message)}</span>`;
  }
}

async function refreshModels() {
  try {
    const d = await getJSON("/dashboard/api/models");
    $("model-version").textContent = d.serving;
    let h = `<p>serving <b>${esc(d.serving)}</b></p>`;
    if (d.registry) {
      h += `<table><tr><th>registry version</th><th>bundle</th><th>created</th><th></th></tr>` + d.registry.map((v) =>
        `<tr><td>${v.version}</td><td>${esc(v.bundle)}</td><td>${new Date(v.created_at * 1000).toLocaleString()}</td><td>${v.current ? "current" : ""}</td></tr>`).join("") + `</table>`;
    }
    if (d.experiments.length) {
      h += d.experiments.map((e) => `<p>experiment <b>${esc(e.name)}</b> (${(100 * e.traffic).toFixed(0)}% of users): ` +
        e.arms.map((a) => `${esc(a.name)} ${(100 * a.weight).toFixed(0)}%` + (a.model_version !== null ? ` (model v${a.model_version})` : "")).join(", ") + `</p>`).join("");
    }
    if (d.arms.length) {
      h += `<table id="arms"><tr><th>arm</th><th>users</th><th>impressions</th><th>clicks</th><th>CTR</th><th>95% interval</th><th>vs control</th></tr>` +
        d.arms.map((a) => `<tr><td>${esc(a.arm)}</td><td class="num">${a.users}</td><td class="num">${a.impressions}</td><td class="num">${a.clicks}</td>` +
          `<td class="num">${fmt(a.ctr, 4)}</td><td>[${fmt(a.ctr_ci95[0], 4)}, ${fmt(a.ctr_ci95[1], 4)}]</td>` +
          `<td>${a.vs_control ? `${a.vs_control.diff >= 0 ? "+" : ""}${fmt(a.vs_control.diff, 4)} (p ${fmt(a.vs_control.p_value, 3)})` : ""}</td></tr>`).join("") + `</table>`;
    } else {
      h += `<p class="muted">no A/B arms in the event log yet${d.arms_error ? ` (${esc(d.arms_error)})` : ""}</p>`;
    }
    $("models-body").className = "";
    $("models-body").innerHTML = h;
  } catch (e) {
    $("models-body").innerHTML = `<span class="error">${esc(e.message)}</span>`;
  }
}

async function refreshReport() {
  try {
    const d = await getJSON("/dashboard/api/report");
    if (!d.available) {
      $("report-body").textContent = `no report yet: ${d.hint}`;
      return;
    }
    const s = d.summary || {};
    let h = `<p><a id="report-link" href="${esc(d.url)}" target="_blank">open the report</a> · ${esc(d.path)} · made ${esc(s.created_utc || "?")}</p>`;
    if (s.metrics) {
      h += `<table id="report-metrics"><tr><th>metric</th>` + s.scorers.map((n) => `<th>${esc(n)}</th>`).join("") + `</tr>` +
        Object.entries(s.metrics).map(([m, v]) => `<tr><td>${esc(m)}</td>` + s.scorers.map((n) =>
          `<td class="num">${fmt(v[n].value, 4)} <span class="muted">[${fmt(v[n].lo, 4)}, ${fmt(v[n].hi, 4)}]</span></td>`).join("") + `</tr>`).join("") + `</table>`;
    }
    const sv = s.model && s.model.beyond && s.model.beyond.served;
    if (sv) {
      h += `<p>served: coverage ${fmt(sv.catalog_coverage, 3)} · diversity ${fmt(sv.intra_list_diversity, 3)} · novelty ${fmt(sv.novelty_bits, 2)} bits · ` +
        `mean age ${fmt(sv.freshness_mean_age_h, 1)} h · creator Gini ${fmt(sv.creator_exposure_gini, 3)}</p>`;
    }
    $("report-body").className = "";
    $("report-body").innerHTML = h;
  } catch (e) {
    $("report-body").innerHTML = `<span class="error">${esc(e.message)}</span>`;
  }
}

$("feed-form").addEventListener("submit", showFeed);
const initialUser = new URLSearchParams(location.search).get("user_id");
if (initialUser) { $("user-id").value = initialUser; showFeed(); }
refreshLive();
refreshModels();
refreshReport();
setInterval(refreshLive, 1000);
setInterval(refreshModels, 5000);
setInterval(refreshReport, 15000);
