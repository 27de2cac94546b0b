// Kill-switch panel: state from GET /v1/killswitch (no token), engage/lift through POST /v1/killswitch
// (token), each after an explicit confirmation in a modal dialog.

import * as api from "./api.js";
import { ago, scopeText, when } from "./format.js";

const $ = (id) => document.getElementById(id);

// Resolves true only when the user presses the dialog's confirm button.
export function confirmAction(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (value) => {
      $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.oncancel = () => done(false); // Esc
    dialog.showModal();
    $("confirm-cancel").focus(); // the safe choice has the focus
  });
}

export function render(state) {
  const engaged = state.engaged || [];
  const pill = $("ks-state");
  pill.dataset.engaged = engaged.length ? "true" : "false";
  pill.textContent = engaged.length ? `ENGAGED (${engaged.length})` : "not engaged";
  $("killswitch").classList.toggle("engaged", engaged.length > 0);
  const list = $("ks-list");
  list.textContent = "";
  for (const ks of engaged) {
    const li = document.createElement("li");
    li.dataset.scope = scopeText(ks.scope);
    const text = document.createElement("div");
    const until = ks.expires_at ? `, until ${when(ks.expires_at)}` : "";
    text.innerHTML = "<strong></strong> <span class='muted small'></span><div class='small'></div>";
    text.querySelector("strong").textContent = scopeText(ks.scope);
    text.querySelector("span").textContent = `by ${ks.source}, ${ago(ks.engaged_at)}${until}`;
    text.querySelector("div").textContent = ks.reason;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "lift";
    button.textContent = "Lift…";
    button.onclick = () => liftSwitch(ks);
    li.append(text, button);
    list.append(li);
  }
}

let onChange = () => {};
let onError = () => {};

async function liftSwitch(ks) {
  const where = scopeText(ks.scope);
  const ok = await confirmAction(
    "Lift the kill switch?",
    `Calls on scope ${where} will be let through again (every switch on exactly this scope is lifted).`,
    "Lift",
  );
  if (!ok) return;
  try {
    const result = await api.lift(ks.scope);
    render(result.state);
  } catch (err) {
    onError(err);
  }
  onChange();
}

async function engageFromForm(event) {
  event.preventDefault();
  const key = $("ks-scope-key").value;
  const value = $("ks-scope-value").value.trim();
  const reason = $("ks-reason").value.trim();
  if (key && !value) {
    $("ks-scope-value").focus();
    return;
  }
  const scope = key ? { [key]: value } : {};
  const forSeconds = Number($("ks-for").value) || null;
  const what = key ? `every LLM call with ${key}=${value}` : "EVERY LLM call of every instrumented app";
  const ok = await confirmAction(
    "Engage the kill switch?",
    `This blocks ${what} on this host (they raise costwatch.KillSwitchEngaged)` +
      (forSeconds ? ` for ${forSeconds / 60} minutes` : " until it is lifted") +
      `. Reason: ${reason}`,
    "Engage",
  );
  if (!ok) return;
  try {
    const result = await api.engage(scope, reason, forSeconds);
    render(result.state);
    $("ks-form").reset();
    $("ks-scope-value-label").hidden = true;
    $("ks-engage").open = false;
  } catch (err) {
    onError(err);
  }
  onChange();
}

export function setup(changed, failed) {
  onChange = changed;
  onError = failed;
  $("ks-form").addEventListener("submit", engageFromForm);
  $("ks-scope-key").addEventListener("change", () => {
    $("ks-scope-value-label").hidden = !$("ks-scope-key").value;
  });
}
