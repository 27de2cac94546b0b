// The daemon's API as the page uses it: the token, read-only calls, and the one write (kill switch).
// The token arrives in the URL fragment (#token=…), which browsers never send to a server; it is
// moved into localStorage, removed from the address bar, and only ever sent in the Authorization header.

const KEY = "costwatch.token";

export class AuthError extends Error {}

export function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    localStorage.setItem(KEY, token.trim());
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
}

export const getToken = () => localStorage.getItem(KEY);
export const setToken = (token) => localStorage.setItem(KEY, token.trim());
export const forgetToken = () => localStorage.removeItem(KEY);

async function call(method, path, body, auth = true) {
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = "Bearer " + (getToken() || "");
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = { error: `HTTP ${response.status}` };
  }
  if (response.status === 401) throw new AuthError(data.error || "invalid token");
  if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
  return data;
}

// Relative paths: the page also works behind a reverse proxy under a prefix.
export const sql = (text) => call("POST", "v1/sql", { sql: text });
export const status = () => call("GET", "v1/status");
export const budgets = () => call("GET", "v1/budgets");
export const killswitch = () => call("GET", "v1/killswitch", undefined, false);
export const queries = () => call("GET", "spend-page/queries.json", undefined, false);

export function engage(scope, reason, forSeconds) {
  const body = { action: "engage", scope, reason, source: "web" };
  if (forSeconds) body.for_s = forSeconds;
  return call("POST", "v1/killswitch", body);
}

export const lift = (scope) => call("POST", "v1/killswitch", { action: "lift", scope, by: "web" });

// Rows as objects keyed by column name.
export function records(result) {
  return result.rows.map((row) => Object.fromEntries(result.columns.map((c, i) => [c, row[i]])));
}
