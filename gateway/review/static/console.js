// The review console: log in with a key, judge the next item, see the summary.
// Plain JavaScript, no dependencies; the key stays in this tab's sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("turnout-review-key"), reasons: [], item: null,
  history: [], reason: null, view: "queue" };

class ApiError extends Error {}

async function api(path, body) {
  const init = { headers: { authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/review/api${path}`, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || `HTTP ${response.status}`;
    throw new ApiError(`${response.status}: ${message}`);
  }
  return data;
}

function say(message, kind = "error") {
  const other = kind === "error" ? "notice" : "error";
  $(other).hidden = true;
  $(kind).textContent = message;
  $(kind).hidden = !message;
}

function show(section) {
  state.view = section;
  for (const name of ["login", "queue", "summary"]) $(name).hidden = name !== section;
  $("nav").hidden = section === "login";
}

async function login(key) {
  state.key = key;
  try {
    const me = await api("/me");
    sessionStorage.setItem("turnout-review-key", key);
    state.reasons = me.reasons;
    $("who").textContent = me.reviewer;
    renderReasons();
    say("");
    show("queue");
    await next();
  } catch (error) {
    state.key = null;
    sessionStorage.removeItem("turnout-review-key");
    show("login");
    say(error.message);
  }
}

function renderReasons() {
  const box = $("reasons");
  box.textContent = "";
  state.reasons.forEach((reason, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.reason = reason;
    button.textContent = `${index + 1} ${reason.replaceAll("_", " ")}`;
    button.addEventListener("click", () => pickReason(reason));
    box.appendChild(button);
  });
}

function pickReason(reason) {
  state.reason = state.reason === reason ? null : reason;
  for (const button of $("reasons").children) {
    button.setAttribute("aria-pressed", String(button.dataset.reason === state.reason));
  }
}

function routeFilter() {
  const route = $("route-filter").value.trim();
  return route ? `route=${encodeURIComponent(route)}` : "";
}

function render(item) {
  state.item = item;
  $("empty").hidden = item !== null;
  $("item").hidden = item === null;
  if (item === null) return;
  $("item-id").textContent = String(item.id);
  $("item-route").textContent = item.route;
  $("item-version").textContent = item.version;
  $("item-arm").textContent = item.arm;
  $("item-reason").textContent = item.reason.replaceAll("_", " ");
  $("item-schema").textContent = item.schema_verdict;
  $("item-refusal").textContent = item.refusal === null ? "not checked" : item.refusal ? "refused" : "no";
  $("item-drift").textContent = item.drifted ? "route/version drifting" : "no";
  const judged = item.judgement;
  $("item-judgement").textContent = judged
    ? `${judged.verdict}${judged.reason ? ` (${judged.reason})` : ""} by ${judged.reviewer}` : "not yet";
  $("item-judgement").className = judged ? `${judged.verdict}-verdict` : "";
  const prompt = $("item-prompt");
  prompt.textContent = "";
  const turns = item.messages || [{ role: "prompt", content: item.prompt || "" }];
  for (const turn of turns) {
    const line = document.createElement("div");
    line.className = "turn";
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = `${turn.role}: `;
    line.append(role, typeof turn.content === "string" ? turn.content : JSON.stringify(turn.content));
    prompt.appendChild(line);
  }
  $("item-answer").textContent = item.answer;
  $("item-errors").textContent = "";
  for (const message of item.schema_errors) {
    const li = document.createElement("li");
    li.textContent = message;
    $("item-errors").appendChild(li);
  }
  // A shadow pair: the served (stable) answer on the left, the candidate's on the right.
  const paired = item.second_answer !== null;
  $("answers").classList.toggle("paired", paired);
  $("answer-title").textContent = paired ? `Served answer (${item.version})` : "Answer";
  $("second-title").textContent = paired ? `Candidate's answer (shadow, ${item.second_version})` : "";
  $("second").hidden = !paired;
  $("item-second").textContent = item.second_answer || "";
  $("correction").value = judged && judged.correction ? judged.correction : "";
  $("correction").placeholder = item.has_schema ? "JSON that meets the route's schema" : "";
  pickReason(judged ? judged.reason : null);
  if (judged === null) pickReason(null);
}

async function next() {
  const query = [routeFilter()].filter(Boolean).join("&");
  try {
    const data = await api(`/next${query ? `?${query}` : ""}`);
    render(data.item);
  } catch (error) { say(error.message); }
}

async function judge(verdict) {
  const item = state.item;
  if (!item) return;
  const correction = $("correction").value;
  try {
    await api(`/items/${item.id}/judgement`, { verdict, reason: state.reason,
      correction: correction.trim() ? correction : null });
    state.history.push(item.id);
    await next();
    say(`Item ${item.id} judged ${verdict}.`, "notice");
  } catch (error) { say(error.message); }
}

async function skip() {
  const item = state.item;
  if (!item) return;
  try {
    await api(`/items/${item.id}/skip`, {});
    state.history.push(item.id);
    const data = await api(`/next?exclude=${item.id}${routeFilter() ? `&${routeFilter()}` : ""}`);
    render(data.item);
    say(`Item ${item.id} skipped.`, "notice");
  } catch (error) { say(error.message); }
}

async function back() {
  const id = state.history.pop();
  if (id === undefined) { say("Nothing to go back to.", "notice"); return; }
  try {
    const data = await api(`/items/${id}`);
    render(data.item);
    say(`Back to item ${id}.`, "notice");
  } catch (error) { say(error.message); }
}

function cell(row, text, header = false) {
  const element = document.createElement(header ? "th" : "td");
  element.textContent = text;
  row.appendChild(element);
}

const percent = (value) => (value === null ? "–" : `${(100 * value).toFixed(1)} %`);

async function summary() {
  show("summary");
  const query = routeFilter();
  try {
    const data = await api(`/summary${query ? `?${query}` : ""}`);
    const box = $("summary-tables");
    box.textContent = "";
    const routes = [...new Set(data.data.map((row) => row.route))];
    if (routes.length === 0) box.textContent = "Nothing queued or reviewed yet.";
    for (const route of routes) {
      const columns = data.data.filter((row) => row.route === route);
      const heading = document.createElement("h2");
      heading.textContent = route;
      const table = document.createElement("table");
      table.dataset.route = route;
      const head = document.createElement("tr");
      cell(head, "", true);
      for (const column of columns) cell(head, `${column.arm}: ${column.version}`, true);
      table.appendChild(head);
      const lines = [
        ["reviewed", (c) => String(c.reviewed)],
        ["judged bad", (c) => String(c.bad)],
        ["share bad", (c) => percent(c.bad_share)],
        ["95 % interval", (c) => (c.bad_share === null ? "–"
          : `${percent(c.bad_share_low)} – ${percent(c.bad_share_high)}`)],
        ["waiting", (c) => String(c.pending)],
      ];
      for (const [name, value] of lines) {
        const row = document.createElement("tr");
        row.dataset.line = name;
        cell(row, name);
        for (const column of columns) cell(row, value(column));
        table.appendChild(row);
      }
      box.append(heading, table);
    }
  } catch (error) { say(error.message); }
}

function onKey(event) {
  if (state.view === "login" || event.altKey || event.metaKey) return;
  const typing = event.target === $("correction") || event.target === $("route-filter");
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    if (event.target === $("correction") && event.key === "Enter" && event.ctrlKey) {
      event.preventDefault();
      event.target.blur();
      judge("bad");
    }
    return;
  }
  if (event.ctrlKey) return;
  if (event.key === "v") { event.preventDefault(); if (state.view === "summary") { show("queue"); next(); } else summary(); return; }
  if (state.view !== "queue") return;
  const index = Number.parseInt(event.key, 10);
  if (index >= 1 && index <= state.reasons.length) { pickReason(state.reasons[index - 1]); return; }
  const actions = { g: () => judge("good"), b: () => judge("bad"), s: skip, k: back,
    ArrowLeft: back, e: () => $("correction").focus() };
  const action = actions[event.key];
  if (action) { event.preventDefault(); action(); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => { event.preventDefault(); login($("key").value); });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem("turnout-review-key");
    state.key = null;
    state.history = [];
    show("login");
  });
  $("good").addEventListener("click", () => judge("good"));
  $("bad").addEventListener("click", () => judge("bad"));
  $("skip").addEventListener("click", skip);
  $("back").addEventListener("click", back);
  $("show-summary").addEventListener("click", summary);
  $("show-queue").addEventListener("click", () => { show("queue"); next(); });
  $("route-filter").addEventListener("change", () => (state.view === "summary" ? summary() : next()));
  document.addEventListener("keydown", onKey);
  if (state.key) login(state.key); else show("login");
});
