// Weir dashboard: devices, live charts, engine health, a SQL console and an upload form. No libraries.
"use strict";

const KEY_STORAGE = "weir-api-key";
const MAX_WINDOWS = 120;
const CHART_WINDOWS = { "1m": 60e3, "15m": 900e3 };
const MAX_DEVICE_ROWS = 25;
const MAX_RESULT_ROWS = 1000;

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  devices: [],
  latest: new Map(), // device -> [{sensor, value, timestamp}]
  selected: null,
  charts: new Map(), // sensor -> chart (of the selected device)
  feeds: [],
  lastMetrics: null,
  started: false,
};

// ---------- small helpers ----------

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US", { useGrouping: false });
  return String(Number(value.toPrecision(6)));
}

const formatCount = (value) => Math.round(value).toLocaleString("en-US");
const plural = (count, noun) => `${formatCount(count)} ${noun}${count === 1 ? "" : "s"}`;

function formatAgo(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (!Number.isFinite(seconds)) return "never";
  if (seconds < 0) return "in the future";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

function timeElement(iso) {
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString() }, formatAgo(iso));
}

const show = (node, visible) => { node.hidden = !visible; };

// ---------- API access and auth ----------

const httpError = (status, message) => Object.assign(new Error(message), { status });
const basicAuth = (key) => "Basic " + btoa(String.fromCharCode(...new TextEncoder().encode(`${key}:`)));

// X-Requested-With makes the server answer a missing or wrong key without `WWW-Authenticate`, so the browser
// leaves the 401 to this page (its own key prompt) instead of opening its login dialog.
function authHeaders(extra = {}) {
  const headers = { ...extra, "X-Requested-With": "weir-dashboard" };
  return state.key ? { ...headers, Authorization: basicAuth(state.key) } : headers;
}

// The server's error text: the JSON "error" field when there is one, else the body as text.
function errorText(text, status) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON */ }
  return text.trim() || `HTTP ${status}`;
}

async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (response.ok) return response;
  const message = errorText(await response.text(), response.status);
  if (response.status === 401) askForKey(message);
  throw httpError(response.status, message);
}

const getJson = async (path) => (await request(path)).json();

function postSql(sql, accept = "application/json") {
  const headers = { "Content-Type": "application/json", Accept: accept };
  return request("/api/v1/sql", { method: "POST", headers, body: JSON.stringify({ sql }) });
}

function askForKey(message) {
  const prompt = $("#auth");
  showAuthError(state.key ? `The key was refused: ${message}` : "");
  if (!prompt.hidden) return;
  show(prompt, true);
  $("#main").inert = true;
  $("#key-input").focus();
}

function showAuthError(message) {
  $("#auth-error").textContent = message;
  show($("#auth-error"), Boolean(message));
}

async function onKeySubmit(event) {
  event.preventDefault();
  state.key = $("#key-input").value.trim();
  try {
    await getJson("/api/v1/devices");
  } catch (error) {
    if (error.status !== 401) showAuthError(`Could not check the key: ${error.message}`);
    return; // on 401, askForKey has shown why
  }
  sessionStorage.setItem(KEY_STORAGE, state.key);
  show($("#auth"), false);
  $("#main").inert = false;
  show($("#forget-key"), true);
  startDashboard(true);
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = "";
  show($("#forget-key"), false);
  closeFeeds();
  askForKey("no credentials provided");
}

// ---------- devices ----------

async function refreshDevices() {
  const { devices } = await getJson("/api/v1/devices");
  state.devices = devices.sort((a, b) => a.device.localeCompare(b.device));
  await Promise.allSettled(visibleDevices().map(async ({ device }) => {
    state.latest.set(device, (await getJson(`/api/v1/latest?device=${encodeURIComponent(device)}`)).latest);
  }));
  renderDevices();
  if (!state.selected && state.devices.length) selectDevice(state.devices[0].device, false);
  else if (state.selected) updateCardsFromLatest();
}

function visibleDevices() {
  const filter = $("#device-filter").value.trim().toLowerCase();
  return state.devices.filter((d) => d.device.toLowerCase().includes(filter))
    .filter((d, i) => i < MAX_DEVICE_ROWS || d.device === state.selected);
}

function renderDevices() {
  const shown = visibleDevices();
  const rows = shown.map((d) => deviceRow(d, state.latest.get(d.device) || []));
  $("#devices tbody").replaceChildren(...rows);
  const hidden = state.devices.length - shown.length;
  $("#devices-note").textContent = state.devices.length === 0 ? "No devices yet."
    : hidden > 0 ? `${plural(hidden, "more device")}: filter to find them.` : `${plural(state.devices.length, "device")}.`;
}

function deviceRow(device, latest) {
  const selected = device.device === state.selected;
  const button = el("button", {
    type: "button", class: "device", "aria-pressed": String(selected),
    onclick: () => selectDevice(device.device, true),
  }, device.device);
  const readings = latest.map((r) => el("span", { class: "reading", "data-sensor": r.sensor },
    `${r.sensor} `, el("b", {}, formatNumber(r.value))));
  return el("tr", { "data-device": device.device, class: selected ? "selected" : null },
    el("td", {}, button), el("td", {}, ...readings), el("td", {}, timeElement(device.last_timestamp)));
}

function selectDevice(device, focus) {
  if (state.selected === device && state.charts.size) return;
  state.selected = device;
  renderDevices();
  renderSensorCards();
  openFeed(device);
  if (focus) $("#sensors").focus();
}

// ---------- sensor cards and charts ----------

function renderSensorCards() {
  state.charts.clear();
  const latest = state.latest.get(state.selected) || [];
  $("#sensors-title").textContent = `Sensors of ${state.selected}`;
  $("#sensors-note").textContent = latest.length ? "Mean per window, with the min–max band. Late data redraws past windows."
    : "No readings for this device yet.";
  $("#charts").replaceChildren();
  for (const reading of latest) addChart(reading.sensor, reading);
}

function addChart(sensor, reading) {
  const chart = {
    sensor, view: "1m", drawPending: false, notes: {},
    canvas: el("canvas", { class: "chart", role: "img", "data-device": state.selected, "data-sensor": sensor,
      "data-points": "0", "aria-label": `${sensor}: no data yet` }),
    value: el("span", { class: "chart-value" }, "–"),
    seen: el("p", { class: "chart-seen" }),
    note: el("p", { class: "chart-note" }),
    latestTimestamp: "",
  };
  const toggle = el("div", { class: "toggle", role: "group", "aria-label": `${sensor} window size` },
    ...Object.keys(CHART_WINDOWS).map((view) => el("button", {
      type: "button", "data-view": view, "aria-pressed": String(view === chart.view),
      onclick: (event) => setView(chart, view, event.currentTarget.parentNode),
    }, view === "1m" ? "1 min" : "15 min")));
  const card = el("article", { class: "chart-card", "data-sensor": sensor },
    el("div", { class: "chart-head" }, el("h3", {}, sensor), chart.value, toggle),
    chart.seen, chart.canvas, chart.note);
  $("#charts").append(card);
  state.charts.set(sensor, chart);
  clearWindows(chart);
  if (reading) setLatest(chart, reading.value, reading.timestamp);
  return chart;
}

function setView(chart, view, group) {
  chart.view = view;
  for (const b of group.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
  scheduleDraw(chart);
}

function setLatest(chart, value, timestamp) {
  if (chart.latestTimestamp && Date.parse(timestamp) < Date.parse(chart.latestTimestamp)) return;
  chart.latestTimestamp = timestamp;
  chart.value.textContent = formatNumber(value);
  chart.seen.replaceChildren("Seen ", timeElement(timestamp));
}

function updateCardsFromLatest() {
  for (const reading of state.latest.get(state.selected) || []) {
    const chart = state.charts.get(reading.sensor) || addChart(reading.sensor, reading);
    setLatest(chart, reading.value, reading.timestamp);
  }
}

function clearWindows(chart, view) {
  if (!chart.windows) chart.windows = {};
  for (const v of view ? [view] : Object.keys(CHART_WINDOWS)) chart.windows[v] = new Map();
  scheduleDraw(chart);
}

// Stores a window from the feed; returns false when it is too old to keep.
function upsertWindow(chart, window) {
  const windows = chart.windows[window.window];
  const start = Date.parse(window.start);
  if (windows.size >= MAX_WINDOWS && !windows.has(start) && start < Math.min(...windows.keys())) return false;
  windows.set(start, window);
  if (windows.size > MAX_WINDOWS) {
    const oldest = [...windows.keys()].sort((a, b) => a - b).slice(0, windows.size - MAX_WINDOWS);
    for (const key of oldest) windows.delete(key);
  }
  return true;
}

function onWindowEvent(type, window) {
  if (window.device !== state.selected || !(window.window in CHART_WINDOWS)) return;
  const chart = state.charts.get(window.sensor) || addChart(window.sensor, null);
  if (!upsertWindow(chart, window)) return;
  if (window.window === "1m") setLatest(chart, window.last, window.last_timestamp);
  if (type === "correction") {
    const at = timeLabel(Date.parse(window.start), 0);
    chart.notes[window.window] = `Late data corrected the ${window.window} window at ${at}.`;
  }
  if (window.window === chart.view) scheduleDraw(chart);
}

function scheduleDraw(chart) {
  if (chart.drawPending) return;
  chart.drawPending = true;
  requestAnimationFrame(() => { chart.drawPending = false; drawChart(chart); });
}

function niceStep(range, count) {
  const power = 10 ** Math.floor(Math.log10(range / count));
  return [1, 2, 2.5, 5, 10].find((m) => m * power >= range / count) * power;
}

const TIME_STEPS_MIN = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080];

function timeLabel(ms, stepMs) {
  const d = new Date(ms);
  return stepMs >= 86400e3 ? d.toLocaleDateString([], { month: "short", day: "numeric" })
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

// Splits windows (sorted by start) where one or more windows are missing.
function segments(windows, size) {
  const out = [];
  for (const w of windows) {
    const last = out.at(-1);
    if (last && w.t - last.at(-1).t <= size * 1.01) last.push(w);
    else out.push([w]);
  }
  return out;
}

function chartFrame(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, width, height, left: 46, right: width - 10, top: 8, bottom: height - 22 };
}

function drawAxes(f, x, y, yStep) {
  const { ctx } = f;
  ctx.strokeStyle = "#d3d9e1";
  ctx.fillStyle = "#4a5562";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = Math.ceil(y.min / yStep) * yStep; v <= y.max + 1e-9; v += yStep) {
    const py = Math.round(y.at(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(f.left, py); ctx.lineTo(f.right, py); ctx.stroke();
    ctx.fillText(formatNumber(Number(v.toPrecision(6))), f.left - 5, py);
  }
  const wanted = Math.max(2, Math.floor((f.right - f.left) / 55));
  const stepMs = (TIME_STEPS_MIN.find((m) => m * 60e3 * wanted >= x.max - x.min) || 10080) * 60e3;
  const offset = new Date().getTimezoneOffset() * 60e3; // put labels on local round times
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let t = Math.ceil((x.min - offset) / stepMs) * stepMs + offset; t <= x.max; t += stepMs) {
    const px = Math.round(x.at(t)) + 0.5;
    const label = timeLabel(t, stepMs);
    const half = ctx.measureText(label).width / 2;
    ctx.beginPath(); ctx.moveTo(px, f.bottom); ctx.lineTo(px, f.bottom + 4); ctx.stroke();
    if (px - half >= f.left - 20 && px + half <= f.width) ctx.fillText(label, px, f.bottom + 6);
  }
  ctx.strokeStyle = "#7b8794";
  ctx.beginPath(); ctx.moveTo(f.left + 0.5, f.top); ctx.lineTo(f.left + 0.5, f.bottom + 0.5);
  ctx.lineTo(f.right, f.bottom + 0.5); ctx.stroke();
}

function drawSeries(f, parts, x, y) {
  const { ctx } = f;
  for (const part of parts) {
    ctx.fillStyle = "rgba(10, 88, 168, 0.2)";
    ctx.beginPath();
    part.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x.at(p.t), y.at(p.w.max)));
    [...part].reverse().forEach((p) => ctx.lineTo(x.at(p.t), y.at(p.w.min)));
    ctx.closePath();
    ctx.fill();
    ctx.strokeStyle = "#0a58a8";
    ctx.lineWidth = 2;
    ctx.beginPath();
    part.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x.at(p.t), y.at(p.w.mean)));
    ctx.stroke();
    if (part.length === 1) drawLonePoint(ctx, x.at(part[0].t), part[0].w, y);
  }
}

function drawLonePoint(ctx, px, w, y) {
  ctx.fillStyle = "rgba(10, 88, 168, 0.35)";
  ctx.fillRect(px - 3, y.at(w.max), 6, Math.max(1, y.at(w.min) - y.at(w.max)));
  ctx.fillStyle = "#0a58a8";
  ctx.beginPath(); ctx.arc(px, y.at(w.mean), 3, 0, 2 * Math.PI); ctx.fill();
}

const scale = (min, max, from, to) => ({ min, max, at: (v) => from + ((v - min) / (max - min)) * (to - from) });

function drawChart(chart) {
  const canvas = chart.canvas;
  if (!canvas.isConnected || canvas.clientWidth === 0) return;
  const size = CHART_WINDOWS[chart.view];
  const points = [...chart.windows[chart.view].values()]
    .map((w) => ({ t: Date.parse(w.start) + size / 2, w }))
    .sort((a, b) => a.t - b.t);
  const f = chartFrame(canvas);
  canvas.dataset.points = String(points.length);
  chart.note.textContent = chart.notes[chart.view] || "";
  if (!points.length) {
    canvas.setAttribute("aria-label", `${chart.sensor}: no ${chart.view} windows yet`);
    f.ctx.fillStyle = "#4a5562";
    f.ctx.fillText("Waiting for data…", f.left + 10, f.top + 20);
    return;
  }
  let low = Math.min(...points.map((p) => p.w.min));
  let high = Math.max(...points.map((p) => p.w.max));
  if (high - low < 1e-9) { low -= 1; high += 1; }
  const yStep = niceStep(high - low, 4);
  low = Math.floor(low / yStep) * yStep;
  high = Math.ceil(high / yStep) * yStep;
  const last = points.at(-1).t + size / 2;
  const first = Math.min(points[0].t - size / 2, last - size * 10); // at least ten windows wide
  const x = scale(first, last, f.left + 4, f.right - 4);
  const y = scale(low, high, f.bottom, f.top);
  drawAxes(f, x, y, yStep);
  drawSeries(f, segments(points, size), x, y);
  const latest = points.at(-1).w;
  canvas.setAttribute("aria-label", `${chart.sensor}, ${points.length} windows of ${chart.view}; latest mean `
    + `${formatNumber(latest.mean)} (min ${formatNumber(latest.min)}, max ${formatNumber(latest.max)})`);
}

// ---------- the live feed (server-sent events read through fetch) ----------

function setFeedStatus(kind, text) {
  const node = $("#feed-status");
  node.dataset.state = kind;
  node.textContent = `Live feed: ${text}`;
}

function closeFeeds() {
  state.feeds.forEach((feed) => feed.close());
  state.feeds = [];
}

// One stream per window size for the whole device (not per chart: a browser opens at most six connections to a
// server), each from the MAX_WINDOWS windows before the device was last seen.
function openFeed(device) {
  closeFeeds();
  const seen = Date.parse(state.devices.find((d) => d.device === device)?.last_timestamp) || Date.now();
  const ready = new Set();
  state.feeds = Object.entries(CHART_WINDOWS).map(([view, size]) => {
    const from = new Date((Math.floor(seen / size) - MAX_WINDOWS + 1) * size).toISOString().replace(/\.\d+Z$/, "Z");
    const url = `/api/v1/subscribe?device=${encodeURIComponent(device)}&window=${view}&from=${from}`;
    return subscribe(url, {
      onEvent: (type, data) => {
        if (type === "open") { // the snapshot that follows is the whole state
          ready.delete(view);
          state.charts.forEach((chart) => clearWindows(chart, view));
        } else if (type === "ready") {
          ready.add(view);
          if (ready.size === state.feeds.length) setFeedStatus("live", `live (${device})`);
        } else if (["snapshot", "update", "correction"].includes(type)) onWindowEvent(type, data);
      },
      onStatus: setFeedStatus,
    });
  });
}

function subscribe(url, { onEvent, onStatus }) {
  let controller = null;
  let closed = false;
  let delay = 1000;
  async function connect() {
    controller = new AbortController();
    onStatus("idle", "connecting…");
    try {
      const response = await request(url, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      onEvent("open", {});
      await readEvents(response.body, (type, data) => {
        if (type === "ready") delay = 1000;
        onEvent(type, data);
      });
      throw new Error("the stream ended");
    } catch (error) {
      if (closed) return;
      if (error.status === 401) return onStatus("idle", "needs an API key");
      onStatus("retry", `reconnecting in ${Math.round(delay / 1000)} s (${error.message})`);
      setTimeout(() => { if (!closed) connect(); }, delay);
      delay = Math.min(delay * 2, 30000);
    }
  }
  connect();
  return { close() { closed = true; if (controller) controller.abort(); } };
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatchBlock(block, onEvent);
    }
  }
}

function dispatchBlock(block, onEvent) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length && type === "message") return; // a comment or keep-alive
  try {
    onEvent(type, data.length && data.join("") ? JSON.parse(data.join("\n")) : {});
  } catch (error) {
    console.warn("bad event", type, error);
  }
}

// ---------- engine health ----------

function parseMetrics(text) {
  const series = [];
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line.trim());
    if (!m || line.startsWith("#")) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    series.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return series;
}

// One number for a metric: the sum over its series (e.g. processes), or max for gauges like lag.
function metric(series, name, combine = (a, b) => a + b) {
  const values = series.filter((s) => s.name === name).map((s) => s.value);
  return values.length ? values.reduce(combine) : NaN;
}

async function pollMetrics() {
  try {
    const response = await fetch("/metrics", { headers: authHeaders() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderHealth(parseMetrics(await response.text()), performance.now());
    show($("#health-error"), false);
  } catch (error) {
    $("#health-error").textContent = `Metrics unavailable: ${error.message}`;
    show($("#health-error"), true);
  }
}

function renderHealth(series, now) {
  const accepted = metric(series, "weir_readings_accepted_total");
  const previous = state.lastMetrics;
  state.lastMetrics = { accepted, at: now };
  if (!previous) $("#h-rate").textContent = "measuring…";
  else if (accepted >= previous.accepted) {
    const rate = (accepted - previous.accepted) / ((now - previous.at) / 1000);
    $("#h-rate").textContent = `${formatNumber(Number(rate.toFixed(1)))} readings/s`;
  }
  $("#h-accepted").textContent = Number.isNaN(accepted) ? "–" : formatCount(accepted);
  const rejected = new Map();
  for (const s of series.filter((s) => s.name === "weir_readings_rejected_total")) {
    rejected.set(s.labels.reason || "other", (rejected.get(s.labels.reason || "other") || 0) + s.value);
  }
  $("#h-rejected").textContent = rejected.size
    ? [...rejected].map(([reason, n]) => `${reason}: ${formatCount(n)}`).join(" · ") : "none";
  const lagSeconds = metric(series, "weir_dataflow_lag_seconds", Math.max);
  const lagPositions = metric(series, "weir_dataflow_lag_positions", Math.max);
  $("#h-lag").textContent = Number.isNaN(lagSeconds) ? "–"
    : `${lagSeconds.toFixed(2)} s` + (Number.isNaN(lagPositions) ? "" : ` (${plural(lagPositions, "position")})`);
  renderArchive(series);
}

function renderArchive(series) {
  const durable = metric(series, "weir_wal_durable_position");
  const committed = metric(series, "weir_archive_committed_position");
  const archived = metric(series, "weir_archive_readings_total");
  const bar = $("#h-archive-bar");
  if (Number.isNaN(durable) || Number.isNaN(committed)) {
    $("#h-archive").textContent = "no archive";
    return;
  }
  bar.value = durable > 0 ? Math.min(1, committed / durable) : 1;
  const behind = Math.max(0, durable - committed);
  $("#h-archive").textContent = `committed ${formatCount(committed)} of ${formatCount(durable)} positions`
    + (behind ? ` (${formatCount(behind)} behind)` : " (up to date)")
    + (Number.isNaN(archived) ? "" : `; ${formatCount(archived)} readings archived`);
}

async function refreshLateReadings() {
  try {
    const response = await postSql("SELECT date, readings, late_readings FROM seals ORDER BY date DESC LIMIT 14");
    const rows = await response.json();
    $("#late tbody").replaceChildren(...rows.map((r) => el("tr", {},
      el("td", {}, String(r.date)), el("td", { class: "num" }, formatCount(r.readings ?? 0)),
      el("td", { class: "num" }, formatCount(r.late_readings ?? 0)))));
    $("#late-note").textContent = rows.length ? "" : "No day sealed yet.";
  } catch (error) {
    $("#late-note").textContent = `Seals unavailable: ${error.message}`;
  }
}

// ---------- completeness map ----------

const MAX_MAP_DEVICES = 50;

/** A colour from red (0) through amber to green (1); grey for no expectation. */
function completenessColour(c) {
  if (c === null || c === undefined) return "#e3e6ea";
  return `hsl(${Math.round(120 * c)}, 62%, ${Math.round(46 + 8 * (1 - c))}%)`;
}

async function refreshCompleteness() {
  const map = await getJson("/api/v1/completeness");
  const hours = map.hours.map((h) => h.slice(11, 13));
  const head = el("tr", {}, el("th", { scope: "col" }, "Device"),
    ...hours.map((h, i) => el("th", { scope: "col", class: "hour", title: map.hours[i] }, h)));
  $("#completeness-map thead").replaceChildren(head);
  const devices = map.devices.slice(0, MAX_MAP_DEVICES);
  $("#completeness-map tbody").replaceChildren(...devices.map((d) => el("tr", { "data-device": d.device },
    el("th", { scope: "row" }, d.device),
    ...d.completeness.map((c, i) => {
      const text = c === null ? "no expectation" : `${Math.floor(c * 1000) / 10} %`;
      const cell = el("td", {
        class: "cell", title: `${d.device} ${map.hours[i]}: ${text}`,
        "data-completeness": c === null ? "" : String(c), "aria-label": `${map.hours[i].slice(0, 13)}h: ${text}`,
      });
      // Through the CSSOM: the page's CSP (style-src 'self') refuses style attributes.
      cell.style.backgroundColor = completenessColour(c);
      return cell;
    }))));
  $("#completeness-note").textContent = map.devices.length === 0
    ? "No sensor has an expected interval: start Weir with --expected-interval, e.g. speed=1s,*=1m."
    : map.devices.length > devices.length ? `The first ${devices.length} of ${map.devices.length} devices.` : "";
}

// ---------- SQL console ----------

async function runSql(event) {
  event.preventDefault();
  const sql = $("#sql-input").value;
  const button = $("#sql-run");
  button.disabled = true;
  show($("#sql-error"), false);
  $("#sql-meta").textContent = "Running…";
  const began = performance.now();
  try {
    const rows = await (await postSql(sql)).json();
    const ms = performance.now() - began;
    renderResults(rows);
    $("#sql-meta").textContent = `${plural(rows.length, "row")} in ${ms.toFixed(1)} ms`;
  } catch (error) {
    $("#sql-meta").textContent = `Failed after ${(performance.now() - began).toFixed(1)} ms`;
    showSqlError(error.message);
    $("#sql-results").replaceChildren();
  } finally {
    button.disabled = false;
  }
}

function showSqlError(message) {
  $("#sql-error").textContent = message;
  show($("#sql-error"), true);
}

// Columns in order of first appearance (JSON rows omit nulls).
function columnsOf(rows) {
  const columns = new Set();
  for (const row of rows) for (const name of Object.keys(row)) columns.add(name);
  return [...columns];
}

function cell(value) {
  if (value === undefined || value === null) return el("td", { class: "null" }, "NULL");
  if (typeof value === "number") return el("td", { class: "num" }, formatNumber(value));
  return el("td", {}, typeof value === "object" ? JSON.stringify(value) : String(value));
}

function renderResults(rows) {
  const table = $("#sql-results");
  const columns = columnsOf(rows);
  const head = el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { scope: "col" }, c))));
  const body = el("tbody", {}, ...rows.slice(0, MAX_RESULT_ROWS).map((row) =>
    el("tr", {}, ...columns.map((c) => cell(row[c])))));
  const caption = el("caption", { class: "visually-hidden" }, "Query results");
  table.replaceChildren(caption, head, body);
  if (rows.length > MAX_RESULT_ROWS) {
    table.append(el("tfoot", {}, el("tr", {}, el("td", { colspan: columns.length },
      `Showing the first ${MAX_RESULT_ROWS} of ${formatCount(rows.length)} rows; download the CSV for all.`))));
  }
}

async function downloadCsv() {
  const button = $("#sql-csv");
  button.disabled = true;
  show($("#sql-error"), false);
  try {
    const blob = await (await postSql($("#sql-input").value, "text/csv")).blob();
    const url = URL.createObjectURL(blob);
    el("a", { href: url, download: "weir-query.csv" }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $("#sql-meta").textContent = `CSV downloaded (${formatCount(blob.size)} bytes)`;
  } catch (error) {
    showSqlError(error.message);
  } finally {
    button.disabled = false;
  }
}

// ---------- upload ----------

function uploadFile(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  const status = $("#upload-status");
  if (!file) return void (status.textContent = "Choose a file first.");
  const xhr = new XMLHttpRequest();
  const bar = $("#upload-progress");
  xhr.open("POST", "/ingest?verbose=true");
  xhr.setRequestHeader("Content-Type", "application/x-ndjson");
  if (/\.gz$/i.test(file.name)) xhr.setRequestHeader("Content-Encoding", "gzip");
  xhr.setRequestHeader("X-Requested-With", "weir-dashboard");
  if (state.key) xhr.setRequestHeader("Authorization", basicAuth(state.key));
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    bar.value = e.loaded / e.total;
    status.textContent = `Sending ${formatCount(e.loaded)} of ${formatCount(e.total)} bytes`;
  };
  xhr.upload.onload = () => { status.textContent = "Sent; waiting for the server…"; };
  xhr.onload = () => onUploadDone(xhr.status, xhr.responseText, file.name);
  xhr.onerror = () => { status.textContent = "The upload failed: network error."; $("#upload-button").disabled = false; };
  bar.value = 0;
  show(bar, true);
  $("#upload-button").disabled = true;
  $("#upload-report").replaceChildren();
  status.textContent = `Sending ${file.name}…`;
  xhr.send(file);
}

function onUploadDone(status, text, name) {
  $("#upload-button").disabled = false;
  let body = {};
  try { body = JSON.parse(text); } catch (_) { /* plain text error */ }
  const line = $("#upload-status");
  if (status === 200) {
    line.textContent = `${name}: accepted ${formatCount(body.accepted ?? 0)} readings`
      + (body.position !== undefined ? ` (log position ${body.position}).` : ".");
    refreshDevices().catch(() => {});
  } else if (status === 401) {
    line.textContent = "The server needs an API key.";
    askForKey(errorText(text, status));
  } else if (Array.isArray(body.errors)) {
    line.textContent = `${name}: accepted ${formatCount(body.accepted ?? 0)}, rejected ${formatCount(body.rejected ?? body.errors.length)}.`;
    renderUploadErrors(body);
    refreshDevices().catch(() => {});
  } else {
    const hint = { 413: "The file is too large for one request", 415: "The server refused the file type" }[status];
    line.textContent = `${name}: ${hint || `failed (HTTP ${status})`}: ${errorText(text, status)}`;
  }
}

function renderUploadErrors(body) {
  const rows = body.errors.slice(0, 500).map((e) => el("tr", { "data-line": String(e.line) },
    el("td", { class: "num nowrap" }, `Line ${e.line}`), el("td", {}, e.error)));
  const parts = [el("table", { class: "data" },
    el("caption", { class: "report-summary" }, "Rejected lines"),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Line"), el("th", { scope: "col" }, "Error"))),
    el("tbody", {}, ...rows))];
  if (!body.errors.length) parts.pop();
  if (body.error) parts.unshift(el("p", { class: "error" }, body.error));
  if (body.errors.length > 500) parts.push(el("p", { class: "muted" }, `…and ${body.errors.length - 500} more.`));
  $("#upload-report").replaceChildren(el("div", { class: "table-wrap" }, ...parts));
}

// ---------- start ----------

function every(ms, task) {
  const run = () => task().catch((error) => console.warn(error.message));
  run();
  return setInterval(run, ms);
}

function startDashboard(restart) {
  if (restart && state.selected) openFeed(state.selected);
  if (state.started) return;
  state.started = true;
  every(5000, refreshDevices);
  every(2000, pollMetrics);
  every(30000, refreshLateReadings);
  every(60000, refreshCompleteness);
}

async function start() {
  $("#auth-form").addEventListener("submit", onKeySubmit);
  $("#forget-key").addEventListener("click", forgetKey);
  $("#device-filter").addEventListener("input", renderDevices);
  $("#sql-form").addEventListener("submit", runSql);
  $("#sql-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#sql-form").requestSubmit();
  });
  $("#sql-csv").addEventListener("click", downloadCsv);
  $("#upload-form").addEventListener("submit", uploadFile);
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => state.charts.forEach(scheduleDraw), 150); });
  show($("#forget-key"), Boolean(state.key));
  try {
    await getJson("/api/v1/devices");
  } catch (error) {
    if (error.status === 401) return; // the key prompt is up
  }
  startDashboard(false);
}

start();
