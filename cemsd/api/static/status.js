// cemsd status page: polls /v1/status with the operator's token and draws it.
// Plain JavaScript, no libraries, no build step. Every value from the daemon is put into
// the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 5000;
const TOKEN_KEY = "cemsd-token";
const LARGE_KEY = "cemsd-large";
const $ = (id) => document.getElementById(id);
let timer = null;
let lastOk = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function pill(text, kind, title) {
  return el("span", { class: `pill ${kind}`, title: title || "" }, text);
}

function fmtValue(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 0.01)) return v.toExponential(3);
  const digits = a >= 1000 ? 1 : a >= 100 ? 2 : 3;
  return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function shortTime(label) {  // "2026-06-01T05:00+08:00" -> "06-01 05:00"
  return label ? label.slice(5, 16).replace("T", " ") : "–";
}

function plantTime(label) {  // "2026-06-01T05:00:07+08:00" -> "05:00:07" (the daemon's zone)
  return label ? label.slice(11).replace(/[+-]\d\d:\d\d$|Z$/, "") : "–";
}

function replaceChildren(node, children) {
  node.replaceChildren(...children);
}

function listOrEmpty(node, items, emptyText) {
  replaceChildren(node, items.length ? items : [el("li", { class: "empty" }, emptyText)]);
}

// --- token ---------------------------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function showLogin(message) {
  clearTimeout(timer);
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showBoard() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
}

// --- polling -------------------------------------------------------------------------------

async function poll() {
  clearTimeout(timer);
  const t = token();
  if (!t) { showLogin(); return; }
  try {
    const reply = await fetch("/v1/status", {
      headers: { Authorization: `Bearer ${t}` }, cache: "no-store" });
    if (reply.status === 401 || reply.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(reply.status === 403 ? "This token was revoked." : "Unknown token.");
      return;
    }
    if (!reply.ok) throw new Error(`${reply.status} ${(await reply.json()).detail || ""}`);
    render(await reply.json());
    $("stale").hidden = true;
  } catch (err) {
    const since = lastOk ? ` Last update ${plantTime(lastOk)} plant time.` : "";
    $("stale").textContent = `No answer from cemsd: ${err.message}.${since}`;
    $("stale").hidden = false;
  }
  timer = setTimeout(poll, POLL_MS);
}

// --- drawing -------------------------------------------------------------------------------

function render(s) {
  showBoard();
  $("plant").textContent = s.plant.name || s.plant.id;
  $("now").textContent = `${s.now_label} (${s.plant.timezone})`;
  $("summary").textContent = s.summary;
  $("updated").textContent = `updated ${plantTime(s.now_label)}`;  // plant time, not the browser's
  lastOk = s.now_label;
  document.title = `cemsd ${s.plant.id}: ${s.summary}`;
  renderDevices(s.devices);
  renderChannels(s);
  renderCharts(s.history);
  renderCalibration(s.calibration, s.windows);
  renderChecks(s.checks);
  renderUplinks(s.uplinks || []);
  renderBypass(s.bypass);
  renderOutputs(s);
}

// A running check: its phase and a countdown that ticks between polls.
let checkTicker = null;
function renderChecks(checks) {
  clearInterval(checkTicker);
  const received = performance.now();
  const draw = () => listOrEmpty($("checks"), checks.map((c) => {
    let where;
    if (c.seconds_left === null) where = `averaging, ${c.readings} of ${c.needed} readings`;
    else {
      const left = Math.max(0, c.seconds_left - (performance.now() - received) / 1000);
      where = `${c.phase}, ${Math.ceil(left)} s left`;
    }
    return el("li", { "data-channel": c.channel, class: "check" },
      pill("C", "C", "calibration in progress"), ` ${c.channel}: `,
      el("span", { class: "phase" }, where), el("div", { class: "muted" }, `now ${c.current}`));
  }), "no check running");
  draw();
  if (checks.length) checkTicker = setInterval(draw, 1000);
}

function renderUplinks(uplinks) {
  const cards = uplinks.map((u) => {
    const state = u.connected ? "up" : "down";
    const lines = [
      el("div", { class: "detail" }, u.endpoint),
      el("div", { class: "backlog" }, `backlog ${u.backlog} period(s)`
        + (u.oldest_unacknowledged ? `, oldest ${shortTime(u.oldest_unacknowledged)}` : "")),
      el("div", { class: "detail" }, `last acknowledgement ${u.last_acknowledged
        ? shortTime(u.last_acknowledged) : "never"}`),
    ];
    if (!u.connected && u.last_error) lines.push(el("div", { class: "detail" }, u.last_error));
    return el("div", { class: `card uplink ${state}`, "data-platform": u.platform },
      el("div", {}, el("span", { class: "name" }, u.platform), " ",
        pill(u.connected ? "CONNECTED" : "DISCONNECTED", state)), ...lines);
  });
  replaceChildren($("uplinks"), cards.length ? cards
    : [el("p", { class: "muted" }, "no HJ 212 platform configured")]);
}

function renderDevices(devices) {
  replaceChildren($("devices"), devices.map((d) => {
    const lines = [el("div", { class: "detail" }, `${d.bus} · ${d.endpoint}`)];
    if (d.state === "down") {
      lines.push(el("div", {}, `down since ${shortTime(d.down_since)} (${fmtAge(d.down_for_s)}),`
        + ` ${d.failed_polls} failed polls`));
    }
    if (d.last_error) lines.push(el("div", { class: "detail" }, `last error: ${d.last_error}`));
    if (d.last_ok) lines.push(el("div", { class: "detail" }, `last good reply ${shortTime(d.last_ok)}`));
    return el("div", { class: `card device ${d.state}`, "data-device": d.name },
      el("div", {}, el("span", { class: "name" }, d.name), " ",
        pill(d.state.toUpperCase(), d.state)),
      ...lines);
  }));
}

function renderChannels(s) {
  const closed = s.hour.minutes_closed;
  $("hour").textContent = `hour from ${shortTime(s.hour.label)} (plant time), ${closed} minute(s)`
    + ` closed; ${s.hour.valid_needed} valid make the hour`;
  const rows = s.channels.map((c) => {
    const flag = c.flag ? pill(c.flag, c.flag, c.meaning) : "–";
    const meaning = c.flag && c.flag !== "N" ? ` ${c.meaning}` : "";
    return el("tr", { class: c.flag && c.flag !== "N" ? "bad" : "", "data-channel": c.name },
      el("td", {}, c.name, c.derived ? el("span", { class: "muted" }, " (minute)") : null),
      el("td", { class: "num" }, el("span", { class: "value" }, fmtValue(c.value)),
        el("span", { class: "unit" }, ` ${c.unit}`)),
      el("td", {}, flag, el("span", { class: "meaning" }, meaning)),
      el("td", { class: "num" }, `${c.valid_minutes} / ${closed}`, c.hour_lost
        ? pill("hour lost", "lost", `fewer than ${s.hour.valid_needed} valid minutes are still possible`)
        : null),
      el("td", { class: "num age" }, fmtAge(c.age_s)),
      el("td", { class: "reason" }, c.reason || ""));
  });
  replaceChildren($("channels").tBodies[0], rows);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderCharts(history) {
  const charts = Object.entries(history.series).map(
    ([name, hours]) => chart(name, hours, history.start, history.labels));
  replaceChildren($("charts"), charts.length ? charts : [el("p", { class: "muted" }, "no series")]);
}

function chart(name, hours, start, labels) {
  const n = labels.length, W = 480, H = 150, left = 46, bottom = 20, top = 8;
  const plot = H - top - bottom;
  const values = hours.filter((h) => h.value !== null).map((h) => h.value);
  const max = values.length ? Math.max(...values, 0) : 1;
  const scale = max > 0 ? plot / max : 0;
  const slot = (W - left) / n;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${name}: hourly means of the last ${n} hours` });
  root.append(svg("line", { class: "grid", x1: left, x2: W, y1: H - bottom, y2: H - bottom }));
  root.append(svg("line", { class: "grid", x1: left, x2: W, y1: top, y2: top }));
  root.append(svg("text", { class: "axis", x: left - 4, y: top + 9, "text-anchor": "end" },
    fmtValue(max)));
  root.append(svg("text", { class: "axis", x: left - 4, y: H - bottom, "text-anchor": "end" }, "0"));
  labels.forEach((label, i) => {
    if (i % 6 === 0) {
      root.append(svg("text", { class: "axis", x: left + i * slot, y: H - 5 }, label.slice(11, 16)));
    }
  });
  const invalid = hours.filter((h) => h.flag !== "N").length;
  hours.forEach((h) => {
    const i = Math.round((h.ts - start) / 3600);
    if (i < 0 || i >= n) return;
    const x = left + i * slot + 1;
    const bad = h.flag !== "N";
    const height = h.value === null ? 0 : Math.max(1, h.value * scale);
    const about = `${h.label}: ${fmtValue(h.value)} ${h.unit}, flag ${h.flag}, `
      + `${h.valid_minutes} valid minutes` + (h.reason ? `; ${h.reason}` : "");
    if (bad) {  // an invalid hour is marked over the whole height, whatever its value
      const band = svg("rect", { class: "invalid-band", x, y: top, width: slot - 2,
        height: plot, "data-invalid": h.label });
      band.append(svg("title", {}, about));
      root.append(band);
    }
    const bar = svg("rect", { class: bad ? "bar invalid" : "bar", x,
      y: H - bottom - height, width: slot - 2, height });
    bar.append(svg("title", {}, about));
    root.append(bar);
  });
  const unit = hours.length ? hours[hours.length - 1].unit : "";
  const caption = el("div", { class: "caption" }, el("b", {}, name),
    el("span", { class: "muted" }, `${unit}; ${hours.length} of ${n} h stored, ${invalid} invalid`));
  return el("div", { class: "card chart", "data-series": name }, caption, root);
}

function renderCalibration(rows, windows) {
  replaceChildren($("calibration").tBodies[0], rows.map((c) => el("tr", {},
    el("td", {}, c.channel),
    el("td", {}, pill(c.state.replaceAll("_", " "), c.state)),
    el("td", {}, shortTime(c.last)),
    el("td", { class: "num" }, fmtAge(c.age_s)),
    el("td", {}, shortTime(c.due)))));
  listOrEmpty($("windows"), windows.map((w) => el("li", {},
    pill(w.flag, w.flag, w.meaning), ` ${w.meaning} since ${shortTime(w.since)}: ${w.reason}`,
    el("div", { class: "muted" }, w.channels.join(", ")))), "none open");
}

function fields(f) {
  return Object.entries(f).map(([k, v]) => `${k}: ${v}`).join(" · ");
}

function renderBypass(b) {
  const state = b.active === null ? ["not monitored (no bypass signal configured)", "unknown"]
    : b.active ? ["OPEN", "open"] : ["closed", "closed"];
  replaceChildren($("bypass-state"), [pill(state[0], state[1])]);
  listOrEmpty($("bypass-open"), b.open.map((e) => el("li", {}, fields(e.fields))), "none open");
  listOrEmpty($("bypass-recent"), b.recent.map((e) => el("li", {}, fields(e.fields))), "none");
}

function failingTasks(tasks) {
  const failing = Object.entries(tasks).filter(([, t]) => !t.up || t.crash_loop)
    .map(([name, t]) => `${name} ${t.crash_loop ? "CRASH LOOP" : t.state.toUpperCase()}`
      + ` (${t.restarts} restarts): ${t.last_error}`);
  return failing.length ? failing.join("; ") : "all running";
}

function chainText(chain) {
  if (!chain || !chain.refused) return "every due record sealed";
  const first = chain.first.map((r) => `${r.table} ${r.channel} ${r.ts ? shortTime(r.ts) : "?"}`
    + ` rev ${r.revision}: ${r.why}`);
  return `${chain.refused} RECORD(S) REFUSED FOR SEALING (run cemsd verify): ${first.join("; ")}`;
}

function renderOutputs(s) {
  const facts = [
    ["MQTT outbox", `${s.outputs.outbox_messages} message(s) waiting`],
    ["MQTT broker", s.outputs.mqtt_refused ? `REFUSES THE CREDENTIALS: ${s.outputs.mqtt_refused}`
      : s.outputs.mqtt_connected === null ? "not configured"
      : s.outputs.mqtt_connected ? "connected" : "not connected"],
    ["database writes", s.database.write_failing ? `FAILING: ${s.database.error}` : "ok"],
    ["readings queued", s.database.queued_readings],
    ["tasks", failingTasks(s.tasks || {})],
    ["hash chain", chainText(s.chain)],
    ["bundle signing key", s.signing ? `${s.signing.algorithm} ${s.signing.fingerprint}` : "–"],
  ];
  replaceChildren($("outputs"), facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// --- start ---------------------------------------------------------------------------------

function setLarge(on) {
  document.documentElement.classList.toggle("large", on);
  localStorage.setItem(LARGE_KEY, on ? "1" : "");
}

document.addEventListener("DOMContentLoaded", () => {
  setLarge(Boolean(localStorage.getItem(LARGE_KEY)));
  $("large").addEventListener("click", () =>
    setLarge(!document.documentElement.classList.contains("large")));
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Logged out.");
  });
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    poll();
  });
  poll();
});
