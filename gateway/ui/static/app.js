// The operator's dashboard: a login, hash routes (#/decisions, #/decisions/<id>, #/experts, #/routers,
// #/evaluation, #/feedback) and one loader per view, each reading /ui/api with the key as a bearer header.
// The key lives in sessionStorage only: never in a URL or a cookie, and gone when the tab closes.
import { costQuality, feedbackBars, timeLines } from "/ui/static/charts.js";

const KEY = "moe-gateway-key";
const POLL_MS = 3000; // the decisions view's live refresh
const PAGE_SIZE = 50;
const ADMIN_VIEWS = new Set(["experts", "routers", "evaluation"]);
const VIEWS = ["decisions", "decision", "experts", "routers", "evaluation", "feedback"];
const BODIES = ["#decision-rows", "#decision-body", "#experts-body", "#routers-body", "#evaluation-body",
  "#feedback-body"];
const RELOAD_NOTE = "Every replica switches within its reload interval.";
const DASH = "—";

const $ = (selector) => document.querySelector(selector);

const freshDecisions = () => ({ filters: {}, cursors: [null], next: null, seen: new Set(), models: new Set(),
  experts: new Set() });

const state = {
  me: null,
  generation: 0, // bumped on every navigation: a slow answer for a view left behind is dropped
  poll: null,
  decisions: freshDecisions(),
};

// -- DOM and formatting -----------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function usd(value) {
  if (value === null || value === undefined) return DASH;
  if (value === 0) return "$0";
  // three significant digits below a dollar: a request costs a fraction of a cent
  const digits = value >= 1 ? 2 : Math.max(2, 2 - Math.floor(Math.log10(value)));
  return `$${value.toFixed(digits)}`;
}

// An axis tick: the same without trailing zeros ($0.00002, not $0.0000200).
function usdTick(value) {
  return value === 0 ? "$0" : usd(value).replace(/\.?0+$/, "");
}

function ms(value) {
  if (value === null || value === undefined) return DASH;
  if (value < 10) return `${value.toFixed(1)} ms`;
  if (value < 1000) return `${Math.round(value)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

function pct(value, digits = 1) {
  return value === null || value === undefined ? DASH : `${(value * 100).toFixed(digits)}%`;
}

function num(value, digits = 2) {
  return value === null || value === undefined ? DASH : Number(value).toFixed(digits);
}

function count(value) {
  return value.toLocaleString();
}

function yesNo(value) {
  return value === null || value === undefined ? DASH : value ? "yes" : "no";
}

// A time of day for today, with the date otherwise.
function when(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  const time = d.toLocaleTimeString([], { hour12: false });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function statusPill(status, httpStatus = null) {
  const tone = status === "ok" ? "good" : ["error", "stream_error"].includes(status) ? "bad" : "warn";
  return el("span", { class: `pill ${tone}`, title: httpStatus && `HTTP ${httpStatus}` }, status);
}

function tile(label, value, note = null) {
  return el("div", { class: "tile" }, el("div", { class: "tile-label" }, label),
    el("div", { class: "tile-value" }, value), note && el("div", { class: "tile-note" }, note));
}

function legend(entries) {
  return el("ul", { class: "legend" },
    entries.map(([swatch, label]) => el("li", {}, el("span", { class: `swatch ${swatch}` }), label)));
}

// A horizontal bar for a fraction; its width is set through the CSSOM, which the page's
// Content-Security-Policy allows (it forbids inline style attributes).
function bar(fraction, cls = "") {
  const fill = el("span", { class: `fill ${cls}` });
  fill.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  return el("span", { class: "track" }, fill);
}

function table(head, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, head.map(([label, cls]) => el("th", { class: cls }, label)))),
    el("tbody", {}, rows));
}

function banner(message, tone = "good") {
  const node = $("#banner");
  node.textContent = message;
  node.className = `banner ${tone}`;
  node.hidden = false;
}

// -- the API ---------------------------------------------------------------------------------------
class Unauthorized extends Error {}

async function api(path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(KEY) ?? ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    credentials: "omit",
  });
  const payload = await response.json().catch(() => null);
  const message = payload?.error?.message ?? `${response.status} ${response.statusText}`;
  if (response.status === 401) throw new Unauthorized(message);
  if (!response.ok) throw new Error(message);
  return payload;
}

// -- login, logout ---------------------------------------------------------------------------------
function showLogin(message = "") {
  state.me = null;
  state.generation += 1;
  stopPolling();
  for (const view of VIEWS) {
    $(`#view-${view}`).hidden = true;
    $(`#view-${view}`).removeAttribute("data-loaded");
  }
  for (const body of BODIES) $(body).replaceChildren(); // nothing read with the key stays on the page
  $("#banner").hidden = true;
  $("#nav").hidden = true;
  $("#identity").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-error").hidden = !message;
  $("#api-key").value = "";
  $("#api-key").focus();
}

function showApp() {
  const me = state.me;
  $("#login").hidden = true;
  $("#login-error").hidden = true;
  $("#nav").hidden = false;
  $("#identity").hidden = false;
  $("#whoami").replaceChildren(el("strong", {}, me.name ?? `key ${me.key_id}`), ` · ${me.tenant} `,
    el("span", { class: `pill ${me.admin ? "admin" : "muted"}` }, me.admin ? "admin" : "tenant"));
  document.querySelectorAll("[data-admin]").forEach((node) => { node.hidden = !me.admin; });
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    state.me = await api("/ui/api/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    const refused = error instanceof Unauthorized;
    showLogin(`${refused ? "That key was refused" : "Sign-in failed"}: ${error.message}`);
    return;
  }
  showApp();
  route();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  showLogin(message); // first: with nobody signed in, resetting the filters loads nothing
  state.decisions = freshDecisions();
  $("#filters").reset();
}

// -- routing ---------------------------------------------------------------------------------------
function parseHash() {
  const [view = "decisions", id = null] = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return view === "decisions" && id ? { view: "decision", id: decodeURIComponent(id) } : { view, id: null };
}

const LOADERS = {
  decisions: loadDecisions, decision: loadDecision, experts: loadExperts, routers: loadRouters,
  evaluation: loadEvaluation, feedback: loadFeedback,
};

function route() {
  if (!state.me) return;
  let { view, id } = parseHash();
  if (!LOADERS[view] || (ADMIN_VIEWS.has(view) && !state.me.admin)) {
    history.replaceState(null, "", "#/decisions");
    [view, id] = ["decisions", null];
  }
  const generation = ++state.generation;
  stopPolling();
  $("#banner").hidden = true;
  for (const name of VIEWS) { // only the view shown may say it has loaded
    const section = $(`#view-${name}`);
    section.hidden = name !== view;
    section.removeAttribute("data-loaded");
  }
  const tab = view === "decision" ? "decisions" : view;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === tab));
  show(view, () => LOADERS[view]({ id, current: () => generation === state.generation }));
}

// Runs a view's loader: data-loaded once it has rendered, the login again on a 401, the error in the view otherwise.
async function show(view, load) {
  const section = $(`#view-${view}`);
  section.querySelector(".view-error")?.remove();
  try {
    if (await load()) section.setAttribute("data-loaded", "true");
  } catch (error) {
    if (error instanceof Unauthorized) signOut(`Signed out: ${error.message}`);
    else section.append(el("p", { class: "view-error error", role: "alert" }, error.message));
  }
}

// -- #/decisions -----------------------------------------------------------------------------------
function stopPolling() {
  clearTimeout(state.poll);
  state.poll = null;
}

// Live: the newest page again every POLL_MS, while it is the page shown.
function schedulePoll(current) {
  stopPolling();
  const onOlder = state.decisions.cursors.length > 1;
  const live = $("#live").checked && !onOlder;
  const note = live ? `refreshing every ${POLL_MS / 1000} s` : onOlder ? "paused on older decisions" : "";
  $("#live-note").textContent = note;
  if (!live) return;
  state.poll = setTimeout(async () => {
    try {
      await fetchDecisions(current);
    } catch (error) {
      if (error instanceof Unauthorized) return signOut(`Signed out: ${error.message}`);
      $("#live-note").textContent = `refresh failed: ${error.message}`;
    }
    if (current()) schedulePoll(current);
  }, POLL_MS);
}

async function loadDecisions({ current }) {
  const shown = await fetchDecisions(current);
  if (shown) schedulePoll(current);
  return shown;
}

async function fetchDecisions(current) {
  const d = state.decisions;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE), ...d.filters });
  if (d.cursors.at(-1)) query.set("cursor", d.cursors.at(-1));
  const page = await api(`/ui/api/decisions?${query}`);
  if (!current()) return false;
  renderDecisions(page);
  return true;
}

// The ranked experts with their scores, the chosen one marked (also when a fallback chose one ranked lower).
function ranking(row) {
  const shown = (row.ranked ?? []).slice(0, 3);
  if (row.chosen_expert && !shown.some((r) => r.expert === row.chosen_expert)) {
    shown.unshift({ expert: row.chosen_expert, score: null });
  }
  return el("div", { class: "ranking" },
    shown.map((r) => el("span", {
      class: r.expert === row.chosen_expert ? "rank is-chosen" : "rank", title: `${r.expert}: score ${r.score ?? DASH}`,
    }, r.expert, r.score !== null && [" ", el("b", {}, num(r.score))])),
    row.explored && el("span", { class: "pill warn", title: "chosen by exploration" }, "explored"),
    row.cache_hit && el("span", { class: "pill muted" }, "cached"));
}

function latency(row) {
  if (row.routing_ms === null && row.upstream_ms === null) return DASH;
  return ms((row.routing_ms ?? 0) + (row.upstream_ms ?? 0));
}

function feedbackOf(row) {
  return row.feedback.count ? `${num(row.feedback.mean_score)} (${row.feedback.count})` : DASH;
}

function decisionRow(row, fresh) {
  const open = () => { location.hash = `#/decisions/${encodeURIComponent(row.id)}`; };
  const timings = `routing ${ms(row.routing_ms)} · upstream ${ms(row.upstream_ms)} · first token ${ms(row.ttft_ms)}`;
  return el("tr", {
    "data-decision-id": row.id, tabindex: 0, class: fresh ? "fresh" : null, onclick: open,
    onkeydown: (event) => { if (event.key === "Enter") open(); },
  },
  el("td", { title: row.created_at }, when(row.created_at)),
  state.me.admin && el("td", {}, row.tenant ?? DASH),
  el("td", {}, row.virtual_model ?? row.requested_model),
  el("td", { class: "mono version", title: row.router && `${row.router}@${row.router_version}` },
    row.router_version ?? DASH),
  el("td", {}, ranking(row)),
  el("td", { class: "num", title: timings }, latency(row)),
  el("td", { class: "num cost" }, usd(row.cost_usd)),
  el("td", {}, statusPill(row.status, row.http_status)),
  el("td", { class: "feedback" }, feedbackOf(row)));
}

function renderDecisions(page) {
  const d = state.decisions;
  const highlight = d.seen.size > 0; // rows a refresh brings; not those of a first load
  const rows = page.data.map((row) => decisionRow(row, highlight && !d.seen.has(row.id)));
  for (const row of page.data) {
    d.seen.add(row.id);
    if (row.virtual_model) d.models.add(row.virtual_model);
    if (row.chosen_expert) d.experts.add(row.chosen_expert);
  }
  $("#decision-rows").replaceChildren(...rows);
  $("#decisions-empty").hidden = rows.length > 0;
  $("#models-seen").replaceChildren(...[...d.models].sort().map((v) => el("option", { value: v })));
  $("#experts-seen").replaceChildren(...[...d.experts].sort().map((v) => el("option", { value: v })));
  d.next = page.next_cursor;
  $("#older").disabled = !page.next_cursor;
  $("#newest").disabled = d.cursors.length === 1;
  const where = d.cursors.length === 1 ? "newest" : `page ${d.cursors.length}`;
  $("#page-note").textContent = rows.length ? `${where} · ${rows.length} decision${rows.length === 1 ? "" : "s"}` : "";
}

function reloadDecisions(cursors) {
  state.decisions.cursors = cursors;
  state.decisions.seen = new Set();
  route();
}

function wireDecisions() {
  const form = $("#filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = [...new FormData(form)].map(([name, value]) => [name, String(value).trim()]);
    state.decisions.filters = Object.fromEntries(values.filter(([, value]) => value));
    reloadDecisions([null]);
  });
  form.addEventListener("reset", () => {
    if (!state.me) return;
    state.decisions.filters = {};
    reloadDecisions([null]);
  });
  form.addEventListener("change", (event) => {
    if (event.target.tagName === "SELECT") form.requestSubmit();
  });
  $("#older").addEventListener("click", () => reloadDecisions([...state.decisions.cursors, state.decisions.next]));
  $("#newest").addEventListener("click", () => reloadDecisions([null]));
  $("#refresh").addEventListener("click", route);
  $("#live").addEventListener("change", route);
}

// -- #/decisions/<id> ------------------------------------------------------------------------------
function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.map(([label, value]) => [el("dt", {}, label), el("dd", {}, value ?? DASH)]));
}

function shadowOf(d) {
  if (!d.shadow_version) return DASH;
  return `${d.shadow_version} → ${d.shadow_expert ?? DASH} (${d.shadow_agrees ? "agrees" : "disagrees"})`;
}

async function loadDecision({ id, current }) {
  const { decision: d, calls, feedback } = await api(`/ui/api/decisions/${encodeURIComponent(id)}`);
  if (!current()) return false;
  $("#decision-title").textContent = d.id;
  const top = Math.max(...d.ranked.map((r) => r.score), 1e-9);
  const model = d.virtual_model && d.virtual_model !== d.requested_model
    ? `${d.virtual_model} (asked for ${d.requested_model})` : d.requested_model;
  $("#decision-body").replaceChildren(
    el("div", { class: "grid-2" },
      el("div", { class: "card" }, el("h2", {}, "Request"), facts([
        ["Time", new Date(d.created_at).toLocaleString([], { hour12: false })],
        ["Tenant", `${d.tenant ?? DASH}${d.api_key_id === null ? "" : ` · key ${d.api_key_id}`}`],
        ["Model", model], ["Policy", d.policy],
        ["Status", [statusPill(d.status), ` HTTP ${d.http_status}`]],
        d.error && ["Error", el("span", { class: "error" }, d.error)],
        ["Tokens", `${d.prompt_tokens ?? DASH} in · ${d.completion_tokens ?? DASH} out`],
        ["Cost", usd(d.cost_usd)],
        ["Latency", `routing ${ms(d.routing_ms)} · upstream ${ms(d.upstream_ms)} · first token ${ms(d.ttft_ms)}`],
        ["Streamed", `${yesNo(d.stream)} · cache hit: ${yesNo(d.cache_hit)}`],
      ].filter(Boolean))),
      el("div", { class: "card" }, el("h2", {}, "Routing"), facts([
        ["Router", d.router ? `${d.router}@${d.router_version}` : DASH],
        ["Chosen expert", el("strong", {}, d.chosen_expert ?? DASH)],
        ["Propensity", `${num(d.propensity, 3)} · explored: ${yesNo(d.explored)}`],
        ["Recruited", d.recruited.join(", ") || DASH],
        ["Shadow", shadowOf(d)],
      ]),
      el("h3", {}, "Ranked experts"),
      el("ul", { class: "score-bars" }, d.ranked.map((r) => el("li", {
        class: r.expert === d.chosen_expert ? "is-chosen" : null,
      }, el("span", { class: "name" }, r.expert), bar(r.score / top),
      el("span", { class: "value" }, num(r.score, 3))))))),
    el("div", { class: "card" }, el("h2", {}, "Expert calls"), calls.length
      ? table([["Expert"], ["Status"], ["Latency", "num"], ["First token", "num"], ["Tokens in / out", "num"],
        ["Cost", "num"], ["Started"], ["Error"]],
      calls.map((c) => el("tr", {}, el("td", {}, el("strong", {}, c.expert)), el("td", {}, statusPill(c.status)),
        el("td", { class: "num" }, ms(c.latency_ms)), el("td", { class: "num" }, ms(c.ttft_ms)),
        el("td", { class: "num" }, `${c.prompt_tokens ?? DASH} / ${c.completion_tokens ?? DASH}`),
        el("td", { class: "num" }, usd(c.cost_usd)), el("td", {}, when(c.started_at)),
        el("td", { class: "wrap error" }, c.error ?? ""))), { class: "calls" })
      : el("p", { class: "muted" }, "No expert was called: answered from the cache, or refused before routing.")),
    el("div", { class: "card" }, el("h2", {}, "Feedback"), feedback.length
      ? table([["Source"], ["Score", "num"], ["Should have answered"], ["Comment"], ["When"]],
        feedback.map((f) => el("tr", {}, el("td", {}, f.source), el("td", { class: "num" }, num(f.score)),
          el("td", {}, f.expert ?? DASH), el("td", { class: "wrap" }, f.comment ?? ""),
          el("td", {}, when(f.created_at)))),
        { class: "feedback-list" })
      : el("p", { class: "muted" }, "No feedback on this decision yet.")),
  );
  return true;
}

// -- #/experts -------------------------------------------------------------------------------------
function expertState(e) {
  if (e.breaker_open) return el("span", { class: "pill bad" }, "breaker open");
  return e.healthy ? el("span", { class: "pill good" }, "healthy") : el("span", { class: "pill warn" }, "unhealthy");
}

function expertRow(e, i) {
  return el("tr", { "data-expert": e.name },
    el("td", {}, el("span", { class: `swatch series-${i % 8}` }), el("strong", {}, e.name)),
    el("td", {}, expertState(e)),
    el("td", { class: "num" }, count(e.requests)),
    el("td", {}, el("div", { class: "share" }, bar(e.share, `series-${i % 8}`),
      el("span", { class: "value" }, pct(e.share)))),
    el("td", { class: "num" }, ms(e.p50_ms)), el("td", { class: "num" }, ms(e.p99_ms)),
    el("td", { class: `num${e.errors ? " error" : ""}` }, `${count(e.errors)} (${pct(e.error_rate)})`),
    el("td", { class: "num" }, usd(e.cost_usd)));
}

async function loadExperts({ current }) {
  const minutes = Number($("#experts-window").value);
  const data = await api(`/ui/api/experts?window_minutes=${minutes}`);
  if (!current()) return false;
  const experts = data.experts;
  const total = experts.reduce((sum, e) => sum + e.requests, 0);
  const errors = experts.reduce((sum, e) => sum + e.errors, 0);
  const byExpert = new Map(experts.map((e) => [e.name, []]));
  for (const b of data.cost_over_time) {
    if (!byExpert.has(b.expert)) byExpert.set(b.expert, []);
    byExpert.get(b.expert).push({ t: Date.parse(b.bucket_start), v: b.cost_usd });
  }
  const series = [...byExpert].map(([name, points]) => ({ name, points: points.sort((a, b) => a.t - b.t) }));
  const now = Date.now();
  // Intervals start on round times, the first one before the window does.
  const since = Math.min(now - minutes * 60_000, ...series.flatMap((s) => s.points.map((p) => p.t)));
  $("#experts-body").replaceChildren(
    el("div", { class: "tiles" },
      tile("Requests", count(total), `last ${minutes >= 60 ? `${minutes / 60} h` : `${minutes} min`}`),
      tile("Cost", usd(experts.reduce((sum, e) => sum + e.cost_usd, 0))),
      tile("Errors", count(errors), total ? pct(errors / total) : null),
      tile("Breakers open", count(experts.filter((e) => e.breaker_open).length), `of ${experts.length} experts`)),
    el("div", { class: "card" }, table([["Expert"], ["State"], ["Requests", "num"], ["Traffic share"], ["p50", "num"],
      ["p99", "num"], ["Errors", "num"], ["Cost", "num"]], experts.map(expertRow), { class: "experts" })),
    el("div", { class: "card" }, el("h2", {}, "Cost over time"),
      legend(series.map((s, i) => [`series-${i % 8}`, s.name])),
      timeLines({ series, height: 220, yFormat: usdTick, yLabel: "cost (USD)", title: "cost per expert over time",
        window: [since, now] })),
  );
  return true;
}

// -- #/routers -------------------------------------------------------------------------------------
function confirmAction(title, text) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// A change to what the gateway serves: confirmed first, then sent; the view reloads and says what happened.
async function act({ title, text, path, body, done }) {
  if (!(await confirmAction(title, text))) return;
  try {
    const result = await api(path, { method: "POST", body });
    route();
    banner(done(result));
  } catch (error) {
    if (error instanceof Unauthorized) signOut(`Signed out: ${error.message}`);
    else banner(error.message, "bad");
  }
}

function promoteButton(router, v, to) {
  const label = to === "active" ? "Promote" : "Shadow";
  const becomes = to === "active" ? "the active version, serving all traffic"
    : "the shadow version, deciding beside the active one without serving";
  return el("button", {
    type: "button", class: to === "active" ? "small primary" : "small", "data-action": `${to}-${v.id}`,
    onclick: () => act({
      title: `${label} ${router.name} ${v.version}?`,
      text: `Version ${v.version} (id ${v.id}) becomes ${becomes}. ${RELOAD_NOTE}`,
      path: `/ui/api/routers/versions/${v.id}/promote`, body: { to },
      done: (r) => `${r.router}: ${r.version} is now ${r.status}. ${RELOAD_NOTE}`,
    }),
  }, label);
}

function revertButton(router) {
  return el("button", {
    type: "button", class: "danger", "data-action": "revert",
    onclick: () => act({
      title: `Revert ${router.name}?`,
      text: `The active version retires and the one active before it serves again. ${RELOAD_NOTE}`,
      path: `/ui/api/routers/${encodeURIComponent(router.name)}/revert`,
      done: (r) => `${r.router}: reverted to ${r.version}. ${RELOAD_NOTE}`,
    }),
  }, "Revert");
}

function metrics(m) {
  const entries = Object.entries(m).filter(([, v]) => typeof v === "number" || typeof v === "string");
  if (!entries.length) return el("span", { class: "muted" }, DASH);
  const value = (v) => (typeof v !== "number" ? v : Number.isInteger(v) ? count(v) : num(v, 3));
  return el("span", { class: "metrics", title: JSON.stringify(m, null, 1) }, entries.slice(0, 6).map(([k, v]) =>
    el("span", { class: "metric" }, `${k.replaceAll("_", " ")} `, el("b", {}, value(v)))));
}

function versionRow(router, v) {
  const actions = {
    candidate: [promoteButton(router, v, "active"), promoteButton(router, v, "shadow")],
    shadow: [promoteButton(router, v, "active")],
    retired: [promoteButton(router, v, "active")],
    active: [el("span", { class: "muted" }, "serving")],
  }[v.status] ?? [];
  return el("tr", { "data-version-id": v.id, class: `status-${v.status}` },
    el("td", { class: "num" }, v.id), el("td", { class: "mono" }, v.version),
    el("td", {}, el("span", { class: `pill version-${v.status}` }, v.status)), el("td", {}, when(v.created_at)),
    el("td", { class: "num" }, v.parent ?? DASH), el("td", { class: "wrap" }, metrics(v.metrics)),
    el("td", {}, v.shadow.decisions ? `${pct(v.shadow.agreement)} of ${count(v.shadow.decisions)}` : DASH),
    el("td", {}, v.ab ? `${pct(v.ab.share, 0)} of users · ${count(v.ab.requests)} req` : DASH),
    el("td", { class: "actions" }, actions));
}

function routerCard(router) {
  return el("div", { class: "card router", "data-router": router.name },
    el("div", { class: "card-head" },
      el("div", {}, el("h2", {}, router.name), el("span", { class: "muted" }, "serving "),
        el("code", { class: "serving" }, router.serving)),
      revertButton(router)),
    table([["ID", "num"], ["Version"], ["Status"], ["Created"], ["Parent", "num"], ["Gate / evaluation metrics"],
      ["Shadow agreement"], ["A/B"], ["Actions"]], router.versions.map((v) => versionRow(router, v)),
    { class: "versions" }));
}

async function loadRouters({ current }) {
  const { routers } = await api("/ui/api/routers");
  if (!current()) return false;
  $("#routers-body").replaceChildren(...(routers.length ? routers.map(routerCard)
    : [el("p", { class: "empty" }, "No router is configured.")]));
  return true;
}

// -- #/evaluation ----------------------------------------------------------------------------------
async function loadEvaluation({ current }) {
  const select = $("#evaluation-router");
  if (!select.options.length) {
    const { routers } = await api("/ui/api/routers");
    select.replaceChildren(...routers.map((r) => el("option", { value: r.name }, r.name)));
  }
  const data = await api(`/ui/api/evaluation${select.value ? `?router=${encodeURIComponent(select.value)}` : ""}`);
  if (!current()) return false;
  const { live, points } = data;
  $("#evaluation-body").replaceChildren(
    el("div", { class: "tiles" },
      tile("Served version", el("code", {}, data.version ?? DASH), data.router),
      tile("Live requests (24 h)", count(live.requests)),
      tile("Live cost per 1k", usd(live.cost_per_1k)),
      tile("Live quality", num(live.quality, 3), live.quality === null ? "no feedback yet" : "mean feedback score")),
    el("div", { class: "card" }, el("h2", {}, "Cost–quality curve"),
      points.length ? null
        : el("p", { class: "muted" }, "No evaluation kept for the served version: the live point alone."),
      legend([["curve", "evaluation (offline)"], ["live", "live operating point"]]),
      costQuality({ points, live, costFormat: usdTick, title: "cost-quality curve with the live operating point" })),
    points.length ? el("div", { class: "card" }, table([["Point"], ["Cost per 1k", "num"], ["Quality", "num"]],
      points.map((p) => el("tr", {}, el("td", {}, p.label), el("td", { class: "num" }, usd(p.cost_per_1k)),
        el("td", { class: "num" }, num(p.quality, 3)))), { class: "points" })) : null,
  );
  return true;
}

// -- #/feedback ------------------------------------------------------------------------------------
async function loadFeedback({ current }) {
  const [hours, bucketMinutes] = $("#feedback-window").value.split(":").map(Number);
  const { buckets } = await api(`/ui/api/feedback?window_hours=${hours}&bucket_minutes=${bucketMinutes}`);
  if (!current()) return false;
  const rows = buckets.map((b) => ({
    t: Date.parse(b.start), count: b.count, mean: b.mean_score, up: b.thumbs_up, down: b.thumbs_down,
  }));
  const sum = (pick) => rows.reduce((total, b) => total + pick(b), 0);
  const given = sum((b) => b.count);
  $("#feedback-body").replaceChildren(
    el("div", { class: "tiles" },
      tile("Feedback", count(given), `last ${hours} h`),
      tile("Mean score", num(given ? sum((b) => (b.mean ?? 0) * b.count) / given : null), "0 bad … 1 good"),
      tile("Thumbs up", count(sum((b) => b.up))),
      tile("Thumbs down", count(sum((b) => b.down)))),
    el("div", { class: "card" }, el("h2", {}, "Feedback over time"),
      legend([["up", "thumbs up"], ["down", "thumbs down"], ["other", "scored"], ["mean", "mean score"]]),
      given ? null : el("p", { class: "muted" }, "No feedback in this window."),
      feedbackBars({ buckets: rows, bucketMs: bucketMinutes * 60_000, title: "feedback over time" })),
  );
  return true;
}

// -- start -----------------------------------------------------------------------------------------
function start() {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) signIn(key);
  });
  $("#logout").addEventListener("click", () => signOut("Signed out."));
  for (const id of ["#experts-window", "#evaluation-router", "#feedback-window"]) {
    $(id).addEventListener("change", route);
  }
  wireDecisions();
  window.addEventListener("hashchange", route);
  const key = sessionStorage.getItem(KEY);
  if (key) signIn(key);
  else showLogin();
}

start();
