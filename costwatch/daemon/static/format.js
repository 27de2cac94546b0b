// Number formatting, in one place (tests/web/test_spend_page.py mirrors usd() and pct()).

export function usd(v) {
  if (v === null || v === undefined) return "—";
  const a = Math.abs(v);
  if (a >= 1000) return "$" + v.toLocaleString("en-US", { maximumFractionDigits: 0 });
  if (a >= 1) return "$" + v.toFixed(2);
  return "$" + v.toFixed(4);
}

export function pct(ratio) {
  if (ratio === null || ratio === undefined) return "—";
  return (ratio * 100).toFixed(1) + "%";
}

export function int(v) {
  if (v === null || v === undefined) return "—";
  return Math.round(v).toLocaleString("en-US");
}

export function ms(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 10000) return (v / 1000).toFixed(1) + " s";
  return Math.round(v).toLocaleString("en-US") + " ms";
}

export function ago(epochSeconds) {
  if (!epochSeconds) return "—";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

export function when(epochSeconds) {
  return epochSeconds ? new Date(epochSeconds * 1000).toLocaleString() : "—";
}

export function scopeText(scope) {
  const keys = Object.keys(scope || {}).sort();
  return keys.length ? keys.map((k) => `${k}=${scope[k]}`).join(", ") : "global";
}
