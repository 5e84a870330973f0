// Tollway console: a playground that streams answers from POST /v1/generate (SSE) and a dashboard
// over InsightsService (GET /v1/usage, /v1/calls, /v1/usage/drift). Same origin as the API, so the
// key travels as an ordinary `authorization` header; the server decides what a key may see.
"use strict";

const KEY_STORE = "tollway.apiKey";
const $ = (id) => document.getElementById(id);
const charts = {};
let lastRequestId = "";
let nextCallsPage = "";
let streamAbort = null;

// ---------------------------------------------------------------------------------------------
// Sign-in and the API

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function notice(text) {
  const el = $("notice");
  el.textContent = text || "";
  el.hidden = !text;
}

// An error body is a google.rpc.Status in JSON ({code, message, details}); show its message.
async function failure(res) {
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.message) message = `${message}: ${body.message}`;
  } catch (_) { /* not JSON: the status says enough */ }
  return new Error(message);
}

async function api(path, init = {}) {
  const headers = { authorization: `Bearer ${apiKey()}`, ...(init.headers || {}) };
  if (init.body) headers["content-type"] = "application/json";
  const res = await fetch(path, { ...init, headers });
  if (!res.ok) throw await failure(res);
  return res;
}

async function getJSON(path) { return (await api(path)).json(); }

function showSignedIn() {
  const key = apiKey();
  $("whoami").textContent = key ? `key ${key.slice(0, 9)}…` : "";
  $("signout").hidden = !key;
  $("api-key").closest("label").hidden = !!key;
  document.querySelector("#signin button[type=submit]").hidden = !!key;
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await loadModels();  // proves the key before anything else is shown
    notice("");
  } catch (err) {
    sessionStorage.removeItem(KEY_STORE);
    notice(`Sign-in failed: ${err.message}`);
    return;
  }
  $("api-key").value = "";
  showSignedIn();
  show(location.hash === "#dashboard" ? "dashboard" : "playground");
}

function signOut() {
  sessionStorage.removeItem(KEY_STORE);
  showSignedIn();
  document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
}

function show(view) {
  if (!apiKey()) { notice("Sign in with an API key first."); return; }
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== view; });
  document.querySelectorAll(".tab").forEach((t) => t.setAttribute("aria-selected", String(t.dataset.view === view)));
  history.replaceState(null, "", `#${view}`);
  if (view === "dashboard") refreshDashboard();
}

// ---------------------------------------------------------------------------------------------
// Playground

async function loadModels() {
  const body = await getJSON("/v1/catalog/models");
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  const names = ["auto", ...body.models.map((m) => m.name).filter((n) => n !== "auto")];
  for (const name of names) select.add(new Option(name, name));
  if (names.includes(chosen)) select.value = chosen;
}

function requestBody() {
  const body = {
    model: $("model").value,
    max_tokens: Number($("max-tokens").value) || 0,
    feature: $("feature").value,
  };
  if ($("bypass-cache").checked) body.cache_policy = { mode: "CACHE_MODE_BYPASS" };
  const source = document.querySelector("input[name=source]:checked").value;
  if (source === "template") {
    let variables;
    try { variables = JSON.parse($("variables").value || "{}"); } catch (err) {
      throw new Error(`Variables are not JSON: ${err.message}`);
    }
    const selector = $("template-selector").value.trim();
    body.prompt_ref = { template: $("template").value.trim(), variables };
    if (/^\d+$/.test(selector)) body.prompt_ref.version = selector;
    else if (selector) body.prompt_ref.label = selector;
    if (body.model === "auto" && !$("model").dataset.touched) delete body.model;  // the version's model
  } else {
    body.messages = [];
    if ($("system").value.trim()) body.messages.push({ role: "system", content: $("system").value });
    body.messages.push({ role: "user", content: $("user-message").value });
  }
  return body;
}

function resetPanel() {
  for (const id of ["request", "tier", "model", "provider", "prompt", "tokens", "cost", "latency", "ttft", "citations"]) {
    $(`p-${id}`).textContent = "–";
  }
  $("answer").textContent = "";
  $("answer").classList.remove("error");
  $("feedback").hidden = true;
  $("feedback-state").textContent = "";
}

const usd = (micros) => `$${(Number(micros || 0) / 1e6).toFixed(6)}`;
// CACHE_TIER_UNSPECIFIED is a request the cache was not asked about (bypassed, or no cache).
const tierName = (t) => (!t || t === "CACHE_TIER_UNSPECIFIED" ? "not consulted" : t.replace("CACHE_TIER_", "").toLowerCase());

// One SSE message of the transcoded stream: {"started"|"delta"|"completed"|"error"|...: {...}}.
function onEvent(event) {
  if (event.started) {
    const s = event.started;
    lastRequestId = s.request_id;
    $("p-request").textContent = s.request_id;
    $("p-tier").textContent = tierName(s.cache_tier) + (s.degraded ? " (degraded)" : "");
    $("p-model").textContent = s.model + (s.fallback_path && s.fallback_path.length ? ` (after ${s.fallback_path.join(" > ")})` : "");
    $("p-provider").textContent = s.provider || "–";
    if (s.prompt_template) $("p-prompt").textContent = `${s.prompt_template} v${s.prompt_version}`;
  } else if (event.delta) {
    $("answer").textContent += event.delta.text;
  } else if (event.completed) {
    const c = event.completed;
    const u = c.usage || {};
    $("p-tokens").textContent = `${u.input_tokens || 0} / ${u.output_tokens || 0}` +
      (u.cached_input_tokens ? ` (${u.cached_input_tokens} cached)` : "");
    $("p-cost").textContent = usd(c.cost && c.cost.cost_usd_micros);
    $("p-latency").textContent = `${c.latency_ms} ms`;
    $("p-ttft").textContent = `${c.ttft_ms} ms`;
    $("stream-state").textContent = "done";
    $("feedback").hidden = !lastRequestId;
  } else if (event.error) {
    $("answer").classList.add("error");
    $("answer").textContent += `\n[${event.error.reason}] ${event.error.message}`;
    $("stream-state").textContent = "failed";
  }
  if (event.citations) {
    const list = event.citations.citations || event.citations;
    $("p-citations").textContent = (Array.isArray(list) ? list : [])
      .map((c) => c.title || c.document_id || JSON.stringify(c)).join(", ") || "–";
  }
}

async function send(event) {
  event.preventDefault();
  resetPanel();
  notice("");
  let body;
  try { body = requestBody(); } catch (err) { notice(err.message); return; }
  $("send").disabled = true;
  $("stop").disabled = false;
  $("stream-state").textContent = "streaming…";
  streamAbort = new AbortController();
  try {
    const res = await api("/v1/generate", { method: "POST", body: JSON.stringify(body), signal: streamAbort.signal });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffered.indexOf("\n\n")) >= 0) {
        const message = buffered.slice(0, cut);
        buffered = buffered.slice(cut + 2);
        const data = message.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (data.trim()) onEvent(JSON.parse(data));
      }
    }
    if ($("stream-state").textContent === "streaming…") $("stream-state").textContent = "ended";
  } catch (err) {
    $("stream-state").textContent = err.name === "AbortError" ? "stopped" : "failed";
    if (err.name !== "AbortError") notice(err.message);
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

async function giveFeedback(score) {
  try {
    const res = await api("/v1/feedback", {
      method: "POST", body: JSON.stringify({ request_id: lastRequestId, score }),
    });
    const body = await res.json();
    $("feedback-state").textContent = body.replaced ? "updated, thanks" : "recorded, thanks";
  } catch (err) {
    $("feedback-state").textContent = err.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Dashboard

function usageQuery(group) {
  const q = new URLSearchParams({ group_by: `USAGE_GROUP_${group}` });
  if ($("since").value) q.set("since", $("since").value);
  if ($("tenant-filter").value.trim()) q.set("tenant_id", $("tenant-filter").value.trim());
  return `/v1/usage?${q}`;
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = { animation: false, responsive: true, maintainAspectRatio: false, ...(config.options || {}) };
  charts[id] = new Chart($(id), config);
}

const dollars = (rows) => rows.map((r) => Number(r.cost_usd_micros) / 1e6);
const label = (g, empty) => g || empty;

// A left axis for the first dataset and a right one for calls. Both named: with only the right one
// declared, Chart.js puts an unbound dataset on it too.
const twoAxes = () => ({ y: { position: "left", beginAtZero: true }, calls: { position: "right", beginAtZero: true } });

function costBar(id, rows, empty) {
  draw(id, {
    type: "bar",
    data: { labels: rows.map((r) => label(r.group, empty)), datasets: [{ label: "cost (USD)", data: dollars(rows) }] },
  });
}

async function refreshDashboard(event) {
  if (event) event.preventDefault();
  $("dash-state").textContent = "loading…";
  notice("");
  try {
    const groups = ["DAY", "TENANT", "FEATURE", "MODEL", "CACHE_TIER", "PROMPT_VERSION"];
    const [day, tenant, feature, model, tier, prompt] = await Promise.all(groups.map((g) => getJSON(usageQuery(g))));
    draw("chart-day", {
      type: "line",
      data: {
        labels: day.rows.map((r) => r.group),
        datasets: [{ label: "cost (USD)", data: dollars(day.rows), yAxisID: "y" },
                   { label: "calls", data: day.rows.map((r) => Number(r.request_count)), yAxisID: "calls" }],
      },
      options: { scales: twoAxes() },
    });
    costBar("chart-tenant", tenant.rows, "(none)");
    costBar("chart-feature", feature.rows, "(no feature)");
    draw("chart-model", {
      type: "bar",
      data: {
        labels: model.rows.map((r) => r.group),
        datasets: [{ label: "cost (USD)", data: dollars(model.rows), yAxisID: "y" },
                   { label: "calls", data: model.rows.map((r) => Number(r.request_count)), yAxisID: "calls" }],
      },
      options: { scales: twoAxes() },
    });
    const hits = tier.rows.reduce((n, r) => n + Number(r.cache_hit_count), 0);
    const calls = tier.rows.reduce((n, r) => n + Number(r.request_count), 0);
    draw("chart-tier", {
      type: "doughnut",
      data: { labels: tier.rows.map((r) => r.group), datasets: [{ data: tier.rows.map((r) => Number(r.request_count)) }] },
      options: { plugins: { title: { display: true, text: `hit rate ${calls ? ((100 * hits) / calls).toFixed(1) : 0} %` } } },
    });
    const prompts = prompt.rows.filter((r) => r.group);
    draw("chart-prompt", {
      type: "bar",
      data: {
        labels: prompts.map((r) => r.group),
        datasets: [{ label: "mean latency (ms)", data: prompts.map((r) => r.mean_latency_ms), yAxisID: "y" },
                   { label: "mean feedback", data: prompts.map((r) => r.mean_feedback_score), yAxisID: "score" }],
      },
      options: { scales: { y: { position: "left", beginAtZero: true }, score: { position: "right", min: 0, max: 1 } } },
    });
    fillCompare([["model", model.rows], ["prompt", prompts]]);
    await Promise.all([loadDrift(), loadCalls(true), loadOverview()]);
    $("dash-state").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("dash-state").textContent = "";
    notice(err.message);
  }
}

function cells(tr, values) {
  for (const v of values) tr.insertCell().textContent = v;
}

function fillCompare(kinds) {
  const body = document.querySelector("#compare tbody");
  body.replaceChildren();
  for (const [kind, rows] of kinds) {
    for (const r of rows) {
      cells(body.insertRow(), [
        kind, r.group, r.request_count, usd(r.cost_usd_micros), r.mean_latency_ms.toFixed(0), r.mean_ttft_ms.toFixed(0),
        r.cache_hit_count, r.error_count,
        Number(r.feedback_count) ? `${r.mean_feedback_score.toFixed(2)} (${r.feedback_count})` : "–",
        Number(r.agreement_sample_count) ? `${r.mean_agreement.toFixed(2)} (${r.agreement_sample_count})` : "–",
      ]);
    }
  }
}

const shortEnum = (v, prefix) => (v || "").replace(prefix, "").toLowerCase();

async function loadOverview() {
  const q = $("tenant-filter").value.trim() ? `?tenant_id=${encodeURIComponent($("tenant-filter").value.trim())}` : "";
  const o = await getJSON(`/v1/overview${q}`);
  const fill = (id, rows) => {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren();
    for (const r of rows) cells(body.insertRow(), r);
  };
  const amount = (b, v) => (b.unit === "QUOTA_UNIT_USD_NANOS" ? usd(Number(v) / 1000) : String(v));
  fill("budgets", o.budgets.map((b) => [
    b.tenant_id, b.plan, shortEnum(b.window, "WINDOW_"), shortEnum(b.unit, "QUOTA_UNIT_"),
    amount(b, b.limit), amount(b, b.used), amount(b, b.remaining),
  ]));
  draw("chart-budget", {
    type: "bar",
    data: {
      labels: o.budgets.map((b) => `${b.tenant_id} ${shortEnum(b.window, "WINDOW_")} ${shortEnum(b.unit, "QUOTA_UNIT_")}`),
      datasets: [{ label: "% used", data: o.budgets.map((b) => (Number(b.limit) ? (100 * Number(b.used)) / Number(b.limit) : 0)) }],
    },
    options: { indexAxis: "y", scales: { x: { min: 0, max: 100 } } },
  });
  fill("breakers", o.breakers.map((b) => [b.name, shortEnum(b.state, "BREAKER_STATE_"), b.consecutive_failures, b.last_error]));
  fill("prompts", o.prompts.map((p) => [
    p.template, p.latest_version, Object.entries(p.labels).map(([l, v]) => `${l} → v${v}`).join(", "),
  ]));
  fill("namespaces", o.namespaces.map((n) => {
    const hits = Number(n.exact_hit_count) + Number(n.semantic_hit_count);
    const all = hits + Number(n.miss_count);
    return [n.namespace, n.exact_hit_count, n.semantic_hit_count, n.miss_count,
      all ? `${((100 * hits) / all).toFixed(1)} %` : "–", n.quality_sample_count,
      Number(n.quality_sample_count) ? `${n.agreement_token_f1.toFixed(2)} / ${n.agreement_cosine.toFixed(2)}` : "–"];
  }));
  $("overview-state").textContent = o.unavailable.length ? `not answering: ${o.unavailable.join(", ")}` : "";
}

async function loadDrift() {
  const q = $("tenant-filter").value.trim() ? `?tenant_id=${encodeURIComponent($("tenant-filter").value.trim())}` : "";
  const body = await getJSON(`/v1/usage/drift${q}`);
  const list = $("drift");
  list.replaceChildren();
  for (const s of body.signals) {
    const li = document.createElement("li");
    li.textContent = `${s.dimension} ${s.value}: ${s.signal} ${s.baseline_score.toFixed(2)} → ${s.recent_score.toFixed(2)}`;
    list.append(li);
  }
  if (!body.signals.length) list.append(Object.assign(document.createElement("li"), { textContent: "no drift" }));
}

async function loadCalls(fresh) {
  const q = new URLSearchParams({ page_size: "20" });
  if (!fresh && nextCallsPage) q.set("page_token", nextCallsPage);
  if ($("tenant-filter").value.trim()) q.set("tenant_id", $("tenant-filter").value.trim());
  const body = await getJSON(`/v1/calls?${q}`);
  const tbody = document.querySelector("#calls tbody");
  if (fresh) tbody.replaceChildren();
  for (const call of body.calls) {
    const f = call.fields;
    const tr = tbody.insertRow();
    tr.dataset.requestId = f.request_id;
    cells(tr, [
      new Date(Number(f.timestamp) * 1000).toISOString().replace("T", " ").slice(0, 19), f.tenant, f.request_id,
      f.model, f.cache_tier || "none", f.total_tokens || "", usd(Number(f.cost_usd) * 1e6), f.latency_ms, f.status,
      call.raw_state, call.feedback_score === undefined ? "–" : call.feedback_score.toFixed(2),
    ]);
  }
  nextCallsPage = body.next_page_token;
  $("calls-more").hidden = !nextCallsPage;
}

// ---------------------------------------------------------------------------------------------

function init() {
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => show(t.dataset.view)));
  $("ask").addEventListener("submit", send);
  $("stop").addEventListener("click", () => streamAbort && streamAbort.abort());
  $("model").addEventListener("change", () => { $("model").dataset.touched = "1"; });
  $("thumbs-up").addEventListener("click", () => giveFeedback(1));
  $("thumbs-down").addEventListener("click", () => giveFeedback(0));
  $("dash-controls").addEventListener("submit", refreshDashboard);
  $("calls-more").addEventListener("click", () => loadCalls(false).catch((err) => notice(err.message)));
  document.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", () => {
    const template = document.querySelector("input[name=source]:checked").value === "template";
    $("source-template").hidden = !template;
    $("source-messages").hidden = template;
    $("user-message").required = !template;
  }));
  showSignedIn();
  if (typeof Chart === "undefined") notice("The chart library is missing: run scripts/vendor_web.sh, then regenerate Envoy's config.");
  if (apiKey()) {
    loadModels().catch((err) => notice(err.message));
    show(location.hash === "#dashboard" ? "dashboard" : "playground");
  }
}

init();
