// The spend page: fetch the queries, run each through POST /v1/sql, render; refresh on a timer.

import * as api from "./api.js";
import * as charts from "./charts.js";
import * as ks from "./killswitch.js";
import { ago, int, pct, usd } from "./format.js";
import { renderTable, TABLES } from "./tables.js";

const $ = (id) => document.getElementById(id);
const MAX_BUDGET_GROUPS = 6;
const state = {
  queries: null,
  ranges: null,
  range: null,
  tz: "UTC",
  timer: null,
  busy: false,
  again: false,
  lastOk: 0,
};
window.costwatchPage = state; // for the browser tests and for poking around in devtools

// The same substitution as costwatch.daemon.web.render().
export function render(name, rangeKey = state.range) {
  const r = state.ranges[rangeKey];
  return state.queries[name]
    .replaceAll("{tz}", state.tz)
    .replaceAll("{range}", r.interval)
    .replaceAll("{bucket}", r.bucket);
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("login-token").focus();
}

function banner(message) {
  $("banner").hidden = !message;
  $("banner").textContent = message || "";
}

function setValue(id, value, text) {
  const el = $(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text;
}

function renderKpis(k) {
  setValue("kpi-today", k.spend_today_usd, usd(k.spend_today_usd));
  setValue("kpi-month", k.spend_month_usd, usd(k.spend_month_usd));
  setValue("kpi-projected", k.projected_month_usd, usd(k.projected_month_usd));
  setValue("kpi-range", k.spend_range_usd, usd(k.spend_range_usd));
  setValue("kpi-requests", k.requests, int(k.requests));
  const rate = k.requests ? k.errors / k.requests : null;
  setValue("kpi-errors", rate, rate === null ? "—" : pct(rate));
  $("kpi-unpriced").textContent = k.unpriced ? `${int(k.unpriced)} without a price` : "";
  // Streams that ended without usage: priced from estimated tokens, counted in every sum above.
  const est = $("kpi-estimated");
  est.dataset.count = String(k.estimated || 0);
  est.dataset.value = String(k.estimated_usd || 0);
  est.textContent = k.estimated
    ? `${usd(k.estimated_usd)} from ${int(k.estimated)} estimated call${k.estimated === 1 ? "" : "s"}`
    : "";
  est.title = k.estimated ? "Streams that ended without usage: tokens estimated from the text" : "";
}

function renderBudgets(result) {
  const box = $("budgets");
  box.textContent = "";
  if (!result.rules_loaded || !result.budgets.length) {
    box.innerHTML =
      '<p class="muted">No budget rules loaded. Add <code>kind: budget</code> rules (docs/rules.md) ' +
      "and start the daemon with <code>--rules DIR</code> (default: <code>./alerts</code>).</p>";
    return;
  }
  for (const b of result.budgets) {
    const fmt = b.unit === "usd" ? usd : int;
    // A `per: user` budget has one group per user: show the fullest few.
    const groups = [...b.groups].sort((x, y) => (y.used_ratio || 0) - (x.used_ratio || 0));
    const shown = groups.length ? groups.slice(0, MAX_BUDGET_GROUPS) : [{ scope: "global", spent: 0, used_ratio: 0 }];
    for (const g of shown) {
      const div = document.createElement("div");
      div.className = "budget";
      div.dataset.rule = b.rule;
      div.dataset.scope = g.scope;
      div.dataset.spent = String(g.spent);
      div.dataset.limit = String(b.limit);
      const ratio = g.used_ratio || 0;
      const level = ratio >= 1 ? "over" : ratio >= 0.8 ? "warn" : "ok";
      div.innerHTML =
        "<div class='budget-head'><strong></strong><span class='muted small'></span></div>" +
        `<div class='meter ${level}'><span></span></div>` +
        "<div class='small budget-nums'></div><div class='muted small budget-summary'></div>";
      div.querySelector("strong").textContent = b.rule + (g.scope !== "global" ? ` · ${g.scope}` : "");
      div.querySelector(".budget-head span").textContent = `${b.window} window`;
      div.querySelector(".meter span").style.width = `${Math.min(100, ratio * 100)}%`;
      const projected = g.projected === null || g.projected === undefined ? "" : `, projected ${fmt(g.projected)}`;
      div.querySelector(".budget-nums").textContent =
        `${fmt(g.spent)} of ${fmt(b.limit)} (${pct(ratio)})${projected}`;
      div.querySelector(".budget-summary").textContent = g.summary || "";
      box.append(div);
    }
    if (groups.length > shown.length) {
      const more = document.createElement("p");
      more.className = "muted small";
      more.textContent = `${b.rule}: ${groups.length - shown.length} more groups below ${pct(shown.at(-1).used_ratio)}`;
      box.append(more);
    }
  }
}

function renderSqlList(rangeKey) {
  const box = $("sql-list");
  box.textContent = "";
  for (const name of Object.keys(state.queries)) {
    const d = document.createElement("details");
    d.innerHTML = "<summary></summary><pre></pre>";
    d.querySelector("summary").textContent = name;
    d.querySelector("pre").textContent = render(name, rangeKey);
    d.querySelector("pre").dataset.query = name;
    box.append(d);
  }
}

// Fleet mode (docs/fleet.md): this node's name and how far the ledger is behind it.
function renderFleet(fleet) {
  const el = $("fleet");
  el.hidden = !fleet;
  if (!fleet) return;
  const rep = fleet.replication;
  const ledger = rep.connected ? "ledger connected" : `ledger NOT connected (${rep.last_error || "not yet"})`;
  el.dataset.connected = String(rep.connected);
  el.textContent =
    `Fleet node ${fleet.node}: ${ledger}; replication lag ${rep.lag_events} events` +
    ` (${rep.lag_seconds.toFixed(1)} s); kill switch ${fleet.killswitch.listening ? "listening" : "polling"}`;
}

async function refreshData() {
  const rangeKey = state.range; // everything below uses the range this refresh started with
  const names = Object.keys(state.queries);
  const [kill, budgets, status, ...results] = await Promise.all([
    api.killswitch(),
    api.budgets().catch((err) => (err instanceof api.AuthError ? Promise.reject(err) : { error: err })),
    api.status().catch((err) => (err instanceof api.AuthError ? Promise.reject(err) : {})),
    ...names.map((n) => api.sql(render(n, rangeKey))),
  ]);
  const data = Object.fromEntries(names.map((n, i) => [n, api.records(results[i])]));
  ks.render(kill);
  renderFleet(status.fleet);
  renderKpis(data.kpis[0]);
  if (budgets.error) $("budgets").textContent = `Budgets unavailable: ${budgets.error.message}`;
  else renderBudgets(budgets);
  const r = state.ranges[rangeKey];
  const rangeSeconds = charts.bucketSeconds(r.interval);
  const step = charts.bucketSeconds(r.bucket);
  charts.draw($("chart-model"), data.cost_by_model_over_time, rangeSeconds, step);
  charts.draw($("chart-app"), data.cost_by_app_over_time, rangeSeconds, step);
  for (const name of Object.keys(TABLES)) renderTable($(`tbl-${name}`), name, data[name]);
  renderSqlList(rangeKey);
  document.body.dataset.range = rangeKey;
  for (const el of document.querySelectorAll(".range-label")) el.textContent = `(${r.label.toLowerCase()})`;
}

export async function refresh() {
  if (!api.getToken()) return;
  if (state.busy) {
    state.again = true; // e.g. the range changed mid-refresh: run once more when this one ends
    return;
  }
  state.busy = true;
  state.again = false;
  document.body.classList.add("loading");
  try {
    await refreshData();
    state.lastOk = Date.now() / 1000;
    banner("");
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (err) {
    if (err instanceof api.AuthError) {
      showLogin("The daemon refused the token: " + err.message);
    } else {
      const since = state.lastOk ? ` (showing data from ${ago(state.lastOk)})` : "";
      const what = err instanceof TypeError ? "Cannot reach the daemon" : "The daemon answered with an error";
      banner(`${what}: ${err.message}${since}`);
    }
  } finally {
    state.busy = false;
    document.body.classList.remove("loading");
  }
  if (state.again) await refresh();
}

function schedule() {
  clearTimeout(state.timer);
  const seconds = Number($("refresh").value);
  localStorage.setItem("costwatch.refresh", String(seconds));
  if (seconds > 0) {
    state.timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedule();
    }, seconds * 1000);
  }
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  try {
    const status = await api.status();
    state.tz = status.timezone || "UTC";
  } catch (err) {
    if (err instanceof api.AuthError) return showLogin("The daemon refused the token: " + err.message);
    banner(`Cannot reach the daemon: ${err.message}`);
  }
  await refresh();
  schedule();
}

async function init() {
  api.takeTokenFromFragment();
  const q = await api.queries();
  state.queries = q.queries;
  state.ranges = q.ranges;
  const saved = localStorage.getItem("costwatch.range");
  state.range = saved in q.ranges ? saved : q.default_range;
  const select = $("range");
  for (const [key, r] of Object.entries(q.ranges)) select.add(new Option(r.label, key, false, key === state.range));
  select.onchange = () => {
    state.range = select.value;
    localStorage.setItem("costwatch.range", state.range);
    refresh();
  };
  const savedRefresh = localStorage.getItem("costwatch.refresh");
  if (savedRefresh !== null && [...$("refresh").options].some((o) => o.value === savedRefresh)) {
    $("refresh").value = savedRefresh;
  }
  $("refresh").onchange = schedule;
  $("reload").onclick = refresh;
  $("forget").onclick = () => {
    api.forgetToken();
    showLogin("");
  };
  $("login-form").onsubmit = (event) => {
    event.preventDefault();
    api.setToken($("login-token").value);
    $("login-token").value = "";
    start();
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && Date.now() / 1000 - state.lastOk > Number($("refresh").value || 30)) refresh();
  });
  ks.setup(refresh, (err) =>
    err instanceof api.AuthError ? showLogin("The daemon refused the token: " + err.message) : banner(err.message),
  );
  charts.watch($("chart-model"));
  charts.watch($("chart-app"));
  if (api.getToken()) await start();
  else showLogin("");
}

init().catch((err) => banner(`The page failed to start: ${err.message}`));
