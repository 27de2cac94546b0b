// The table panels: one spec per query (columns, formatting, an inline bar for the main measure).
// Every cell carries data-col and data-value (the raw number) so tests compare exact values.
// A column is [title, value(row), format(value, row)?, subtitle(row)?, "opt"?]; "opt" columns are
// hidden on a phone.

import { ago, int, ms, pct, usd } from "./format.js";

const ratio = (a, b) => (a === null || b === null || b === undefined || !b ? null : a / b);

export const TABLES = {
  spend_by_model: {
    key: (r) => `${r.provider}/${r.model}`,
    columns: [
      ["Model", (r) => r.model, null, (r) => r.provider],
      ["Requests", (r) => r.requests, int],
      ["Tokens in", (r) => r.input_tokens, int, null, "opt"],
      ["Tokens out", (r) => r.output_tokens, int, null, "opt"],
      ["Cost", (r) => r.cost_usd, (v) => (v === null ? "unpriced" : usd(v))],
    ],
    bar: (r, rows) => ratio(r.cost_usd, Math.max(...rows.map((x) => x.cost_usd))),
  },
  top_users: {
    key: (r) => r.user,
    columns: [
      ["User", (r) => r.user],
      ["Requests", (r) => r.requests, int],
      ["Cost", (r) => r.cost_usd, usd],
    ],
    bar: (r, rows) => ratio(r.cost_usd, Math.max(...rows.map((x) => x.cost_usd))),
  },
  errors_by_class: {
    key: (r) => r.error_class,
    columns: [
      ["Class", (r) => r.error_class],
      ["Requests", (r) => r.requests, int],
      ["Share", (r) => r.share, pct],
    ],
    bar: (r) => r.share,
    barClass: (r) => (r.error_class === "ok" ? "ok" : "over"),
  },
  latency_by_model: {
    key: (r) => r.model,
    columns: [
      ["Model", (r) => r.model],
      ["n", (r) => r.requests, int, null, "opt"],
      ["p50", (r) => r.p50_ms, ms],
      ["p95", (r) => r.p95_ms, ms],
      ["p99", (r) => r.p99_ms, ms, null, "opt"],
      ["TTFT p50", (r) => r.ttft_p50_ms, ms, null, "opt"],
      ["TTFT p95", (r) => r.ttft_p95_ms, ms],
    ],
  },
  ratelimit_headroom: {
    key: (r) => `${r.provider}/${r.model}`,
    columns: [
      ["Model", (r) => r.model, null, (r) => r.provider],
      ["Requests left", (r) => ratio(r.remaining_requests, r.limit_requests), pct],
      ["Tokens left", (r) => ratio(r.remaining_tokens, r.limit_tokens), pct],
      ["Seen", (r) => r.seen_at, ago],
    ],
    bar: (r) => {
      const parts = [ratio(r.remaining_requests, r.limit_requests), ratio(r.remaining_tokens, r.limit_tokens)];
      const known = parts.filter((p) => p !== null);
      return known.length ? Math.min(...known) : null;
    },
    barClass: (r, value) => (value < 0.1 ? "over" : value < 0.3 ? "warn" : "ok"),
  },
};

export function renderTable(el, name, rows) {
  const spec = TABLES[name];
  el.textContent = "";
  el.dataset.rows = String(rows.length);
  if (!rows.length) {
    el.innerHTML = '<p class="empty">Nothing in this range.</p>';
    return;
  }
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const [title, , , , optional] of spec.columns) {
    const th = document.createElement("th");
    th.textContent = title;
    if (optional) th.classList.add("opt");
    head.append(th);
  }
  const body = table.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.key = spec.key(r);
    spec.columns.forEach(([title, get, fmt, sub, optional], i) => {
      const td = tr.insertCell();
      const value = get(r);
      td.dataset.col = title;
      if (optional) td.classList.add("opt");
      if (fmt) {
        td.classList.add("num");
        td.dataset.value = value === null || value === undefined ? "" : String(value);
        td.textContent = fmt(value, r);
      } else {
        td.textContent = value;
        if (sub) {
          const small = document.createElement("div");
          small.className = "muted small";
          small.textContent = sub(r);
          td.append(small);
        }
      }
      if (i === 0 && spec.bar) {
        const share = spec.bar(r, rows);
        if (share !== null && share !== undefined) {
          const meter = document.createElement("div");
          meter.className = "meter thin " + (spec.barClass ? spec.barClass(r, share) : "ok");
          meter.innerHTML = "<span></span>";
          meter.firstChild.style.width = `${Math.max(1, Math.min(100, share * 100))}%`;
          td.append(meter);
        }
      }
    });
  }
  const wrap = document.createElement("div");
  wrap.className = "scroll";
  wrap.append(table);
  el.append(wrap);
}
