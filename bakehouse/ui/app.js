// The bakehouse viewer: a single page over the REST API of the server that serves it.
//
// Everything a model or a user wrote is put on the page as text (textContent, never innerHTML), and
// the server's Content-Security-Policy allows no inline script. The API key lives in this tab's
// sessionStorage only; a deep link carries it in the URL fragment, which browsers never send to a
// server, and the viewer removes it from the address bar at once.
"use strict";

const KEY_STORE = "bakehouse.key";
const PAGE_SIZE = 20;
const main = document.getElementById("main");
let leaving = []; // what the current view must stop when another one opens (streams, timers)

// -- small helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(text, hash) {
  return el("a", { href: "#" + new URLSearchParams(hash).toString() }, text);
}

function statusText(status) {
  return el("span", { class: "status-" + status, "data-status": status }, status);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function leave() {
  for (const stop of leaving) stop();
  leaving = [];
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "HTTP " + status);
    this.status = status;
  }
}

async function api(path, params, post) {
  const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE) };
  const init = post ? { method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(post) } : { headers };
  const response = await fetch(url, init);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body && body.error ? body.error : body);
  return body;
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
function follow(path, onEvent) {
  const controller = new AbortController();
  leaving.push(() => controller.abort());
  (async () => {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE), Accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  })().catch(() => {}); // aborted when the view changes, or the server went away
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401) return signIn("That key was not accepted.");
  show(el("p", { class: "error" }, String(error.message || error)));
}

function crumbs(route) {
  const parts = [];
  if (route.repo) parts.push(" / ", link(route.repo, { repo: route.repo }));
  if (route.target) parts.push(" / ", link(route.target, { repo: route.repo, target: route.target }));
  if (route.bake) parts.push(" / ", link("bake " + route.bake, { repo: route.repo, bake: route.bake }));
  document.getElementById("crumbs").replaceChildren(...parts);
}

// -- sign-in ----------------------------------------------------------------------------------

function signIn(message) {
  document.getElementById("signout").hidden = true;
  const input = el("input", { id: "key", type: "password", placeholder: "bh_…", autocomplete: "off" });
  const form = el("form", { class: "signin card", id: "signin" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Paste an API key (bakehouse keys create). It stays in this tab only."),
    message ? el("p", { class: "error", id: "signin-error" }, message) : null,
    input, el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    navigate();
  });
  show(form);
  input.focus();
}

// -- views ------------------------------------------------------------------------------------

async function reposView() {
  const repos = (await api("/v1/repo")).repos;
  const jobs = el("tbody");
  show(
    el("h1", {}, "Repositories"),
    repos.length ? el("ul", { id: "repos" }, repos.map((name) => el("li", {}, link(name, { repo: name }))))
      : el("p", { class: "muted", id: "no-repos" }, "No repositories in this workspace."),
    el("h2", {}, "Jobs"),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ["job", "status", "phase", "progress", "created"].map((h) => el("th", {}, h)))), jobs));
  watchJobs(jobs, {});
}

// The job list, read again every 2 s while the view is open (the server keeps it indexed).
function watchJobs(tbody, filters) {
  const draw = async () => {
    const listed = await api("/v1/jobs", { limit: 50, ...filters });
    tbody.replaceChildren(...listed.jobs.map((job) => el("tr", {},
      el("td", {}, job.kind === "bake" ? link(job.id, { repo: job.repo_name, bake: job.bake_name })
        : link(job.id, { repo: job.repo_name, target: job.target_name, kind: job.kind })),
      el("td", {}, statusText(job.status), job.stalled ? " (stalled)" : ""),
      el("td", {}, job.phase || ""),
      el("td", {}, job.progress_percent === null ? "" : job.progress_percent + " %"),
      el("td", {}, when(job.created_at)))));
  };
  draw().catch(() => {});
  const timer = setInterval(() => draw().catch(() => {}), 2000);
  leaving.push(() => clearInterval(timer));
}

async function repoView(route) {
  const [targets, bakes] = await Promise.all([api(`/v1/repo/${route.repo}/targets`), api(`/v1/repo/${route.repo}/bakes`)]);
  const jobs = el("tbody");
  show(
    el("h1", {}, route.repo),
    el("h2", {}, "Targets"),
    el("ul", { id: "targets" }, targets.targets.map((t) => el("li", {}, link(t, { repo: route.repo, target: t })))),
    el("h2", {}, "Bakes"),
    bakes.bakes.length ? el("ul", { id: "bakes" }, bakes.bakes.map((b) => el("li", {}, link(b, { repo: route.repo, bake: b }))))
      : el("p", { class: "muted" }, "No bakes."),
    el("h2", {}, "Jobs"),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ["job", "status", "phase", "progress", "created"].map((h) => el("th", {}, h)))), jobs));
  watchJobs(jobs, { repo: route.repo });
}

// A job's live panel: status, phase, progress bar, timeline; fed by the job's event stream.
function jobPanel(path, onFinished) {
  const status = el("span", { id: "job-status" }, "…");
  const phase = el("span", { id: "job-phase", class: "muted" });
  const fill = el("div");
  const lines = el("span", { id: "job-lines" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const panel = el("div", { class: "card", id: "job" },
    el("div", { class: "row" }, status, phase, el("div", { class: "bar" }, fill), lines),
    el("details", {}, el("summary", {}, "Timeline"), timeline));
  follow(path + "/events", (name, data) => {
    if (name === "progress") {
      status.replaceChildren(statusText(data.status), data.stalled ? " (stalled)" : "");
      phase.textContent = data.phase || "";
      fill.style.width = (data.progress_percent || 0) + "%";
      lines.textContent = data.lines !== undefined ? `${data.lines} lines` : data.step ? `step ${data.step} of ${data.total_steps}` : "";
      panel.dataset.progress = data.progress_percent ?? "";
      panel.dataset.lines = data.lines ?? "";
      if (data.loss && onFinished) onFinished("progress", data);
    } else {
      timeline.append(el("li", {}, el("span", { class: "muted" }, when(data.timestamp) + " "),
        data.status ? statusText(data.status) : "", data.phase ? ` ${data.phase}` : "", data.note || data.message ? ` — ${data.note || data.message}` : ""));
      if (name === "status" && (data.status === "complete" || data.status === "failed") && onFinished) onFinished(data.status, data);
    }
  });
  return panel;
}

async function targetView(route) {
  const kind = route.kind || "rollout";
  const path = `/v1/repo/${route.repo}/targets/${route.target}/${kind}`;
  const offset = Number(route.offset || 0);
  const job = await api(path);
  const rowsBox = el("div", { id: "rows" });
  const text = el("input", { id: "filter-text", type: "search", placeholder: "text in question or answer", value: route.q || "" });
  const finish = el("select", { id: "filter-finish" }, ["", "stop", "length", "error"].map((f) => el("option", { value: f }, f || "any finish")));
  const errorsOnly = el("input", { id: "filter-errors", type: "checkbox" });
  const stats = el("div", { class: "stats", id: "stats" }, Object.entries(job.stats || {}).filter(([, v]) => typeof v !== "object")
    .map(([k, v]) => el("div", {}, el("span", { class: "muted" }, k + ": "), String(v))));
  let page = null;
  const draw = () => {
    if (!page) return;
    rowsBox.replaceChildren(...renderRows(page.output, kind, { text: text.value.toLowerCase(), finish: finish.value, errorsOnly: errorsOnly.checked }));
  };
  for (const input of [text, finish, errorsOnly]) input.addEventListener("input", draw);
  const pager = el("div", { class: "row", id: "pager" });
  show(
    el("h1", {}, `${route.target}`),
    el("div", { class: "tabs" }, ["stim", "rollout"].map((k) => el("a", { href: "#" + new URLSearchParams({ repo: route.repo, target: route.target, kind: k }), class: k === kind ? "active" : "" }, k))),
    jobPanel(path, (state) => { if (state === "complete" && job.status !== "complete") loadPage(); }),
    el("details", {}, el("summary", {}, "Statistics"), stats),
    el("div", { class: "row filters" }, text, finish, el("label", {}, errorsOnly, " errors only")),
    pager, rowsBox);
  async function loadPage() {
    page = await api(path + "/output", { offset, limit: PAGE_SIZE });
    const to = offset + page.output.length;
    pager.replaceChildren(
      offset > 0 ? link("← previous", { ...route, offset: Math.max(0, offset - PAGE_SIZE) }) : el("span", { class: "muted" }, "← previous"),
      el("span", { id: "page-range" }, page.output.length ? `rows ${offset + 1}–${to} of ${page.lines}` : `no rows yet (${page.status})`),
      page.has_more ? el("a", { id: "next", href: "#" + new URLSearchParams({ ...route, kind, offset: to }) }, "next →") : el("span", { class: "muted" }, "next →"));
    draw();
  }
  await loadPage();
}

function messages(list) {
  return (list || []).map((m) => el("div", { class: "message" }, el("span", { class: "role" }, m.role), typeof m.content === "string" ? m.content : JSON.stringify(m.content)));
}

// Rows of one page grouped by stimulus: its two contexts once, then each sampled response.
function renderRows(rows, kind, filter) {
  const groups = new Map();
  for (const row of rows) {
    const key = row.stimulus_id;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(row);
  }
  const shown = [];
  for (const [id, group] of groups) {
    const first = group[0];
    const question = (first.conditioned_stimulus?.messages || []).map((m) => String(m.content)).join(" ");
    const responses = kind === "rollout" ? group.filter((row) => {
      const answer = row.response ? String(row.response.content) : "";
      if (filter.errorsOnly && !row.error) return false;
      if (filter.finish === "error" ? !row.error : filter.finish && row.finish_reason !== filter.finish) return false;
      return !filter.text || question.toLowerCase().includes(filter.text) || answer.toLowerCase().includes(filter.text);
    }) : group.filter(() => !filter.errorsOnly && !filter.finish && (!filter.text || question.toLowerCase().includes(filter.text)));
    if (!responses.length) continue;
    shown.push(el("div", { class: "stimulus", "data-stimulus": id },
      el("div", { class: "muted" }, `stimulus ${id}`),
      el("div", { class: "contexts" },
        el("div", {}, el("strong", {}, "teacher"), messages(first.unconditioned_stimulus?.messages)),
        el("div", {}, el("strong", {}, "student"), messages(first.conditioned_stimulus?.messages))),
      kind === "rollout" ? responses.map((row) => el("div", { class: "response" + (row.error ? " has-error" : ""), "data-trajectory": row.trajectory_id },
        el("div", { class: "meta" }, `trajectory ${row.trajectory_id} · ${row.finish_reason || "no finish"} · ${row.tokens ?? 0} tokens`),
        row.error ? el("div", { class: "error" }, row.error) : el("div", { class: "text" }, row.response ? String(row.response.content) : ""))) : null));
  }
  return shown.length ? shown : [el("p", { class: "muted" }, "No rows match.")];
}

async function bakeView(route) {
  const path = `/v1/repo/${route.repo}/bakes/${route.bake}`;
  const [bake, metrics] = await Promise.all([api(path), api(path + "/metrics")]);
  const points = metrics.map((row) => [row.iter, row.loss]);
  const chart = el("div", { id: "loss-chart" });
  const redraw = () => chart.replaceChildren(lossChart(points));
  const checkpoints = el("ul", { id: "checkpoints" }, (bake.model_name || []).map((name) => {
    const step = Number(name.split("/").pop());
    return el("li", {}, name, " ", el("button", { onclick: () => download(path, step) }, "download"));
  }));
  show(
    el("h1", {}, `bake ${route.bake}`),
    jobPanel(path, (state, data) => {
      if (state === "progress" && (!points.length || points[points.length - 1][0] < data.step)) { points.push([data.step, data.loss.latest_loss]); redraw(); }
      if (state === "complete" && bake.status !== "complete") navigate(); // again, now with its checkpoints
    }),
    el("h2", {}, "Loss (KL per response token)"), chart,
    el("h2", {}, "Checkpoints"), bake.model_name ? checkpoints : el("p", { class: "muted" }, "Checkpoints are listed when the bake completes."),
    bake.model_name ? await askBox(route, bake) : null,
    el("details", {}, el("summary", {}, "Config"), el("pre", {}, JSON.stringify(bake.config, null, 2))));
  redraw();
}

// One question, three answers side by side (greedy, through /v1/chat/completions): the parent model
// as users met it, the parent under the teacher prompt (the behaviour asked for), the latest checkpoint.
async function askBox(route, bake) {
  const parent = bake.config.model?.parent_model_name || (await api(`/v1/repo/${route.repo}`)).base_model;
  const target = (await api(`/v1/repo/${route.repo}/targets/${bake.config.datasets[0].target}`)).config;
  const teacher = (await api(`/v1/repo/${route.repo}/prompts/${target.teacher_prompt}`)).messages;
  const sides = [
    ["before: " + parent, parent, []],
    [parent + " + teacher prompt", parent, teacher],
    ["after: " + bake.model_name[0], bake.model_name[0], []],
  ];
  const question = el("input", { id: "question", type: "text", placeholder: "Ask all three a question", size: 60 });
  const answers = el("div", { class: "contexts answers", id: "answers" });
  const form = el("form", { class: "card", id: "ask" }, el("h2", {}, "Ask"), el("div", { class: "row" }, question, el("button", { type: "submit" }, "Ask")), answers);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    answers.replaceChildren(...sides.map(([title, model, prompt]) => {
      const text = el("div", { class: "text" }, "…");
      api("/v1/chat/completions", null, { model, messages: [...prompt, { role: "user", content: question.value }], max_tokens: 128, temperature: 0 })
        .then((answer) => { text.textContent = answer.choices[0].message.content; text.dataset.done = "1"; })
        .catch((error) => { text.textContent = String(error.message || error); text.className = "error"; text.dataset.done = "1"; });
      return el("div", { class: "answer" }, el("strong", {}, title), text);
    }));
  });
  return form;
}

async function download(path, step) {
  const link = await api(path + "/download", { checkpoint: step });
  window.location.assign(link.url);
}

function lossChart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 640, height = 220, pad = 36;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  if (!points.length) return el("p", { class: "muted" }, "No steps logged yet.");
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-9)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad });
  add("line", { x1: pad, y1: pad, x2: pad, y2: height - pad });
  add("path", { d: points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), "data-points": points.length });
  add("text", { x: pad, y: pad - 8 }, y1.toPrecision(3));
  add("text", { x: pad, y: height - pad + 16 }, `step ${x0}`);
  add("text", { x: width - pad - 50, y: height - pad + 16 }, `step ${x1}`);
  return svg;
}

// -- routing ----------------------------------------------------------------------------------

function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("key")) return;
  sessionStorage.setItem(KEY_STORE, params.get("key"));
  params.delete("key");
  history.replaceState(null, "", location.pathname + (params.toString() ? "#" + params : ""));
}

async function navigate() {
  leave();
  takeKeyFromFragment();
  const params = Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
  if (!sessionStorage.getItem(KEY_STORE)) return signIn();
  document.getElementById("signout").hidden = false;
  crumbs(params);
  try {
    if (params.repo && params.bake) await bakeView(params);
    else if (params.repo && params.target) await targetView(params);
    else if (params.repo) await repoView(params);
    else await reposView();
  } catch (error) {
    failure(error);
  }
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  location.hash = "";
  navigate();
});
window.addEventListener("hashchange", navigate);
navigate();
