// genlab playground: plain JavaScript over the REST API (/docs), nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
let RUNS = [];

// -- talking to the API ---------------------------------------------------------------------------
async function api(path, body, method) {
  const opts = { method: method || (body === undefined ? "GET" : "POST"), headers: {} };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  const type = r.headers.get("content-type") || "";
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return type.includes("application/json") ? r.json() : r.blob();
}

// POST and read server-sent events: onToken(text) per piece; resolves with the "done" event's data.
async function stream(path, body, onToken, signal) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                body: JSON.stringify(body), signal });
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", done = null;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let ev = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) ev = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const obj = JSON.parse(data);
      if (ev === "token") onToken(obj.text);
      else if (ev === "done") done = obj;
      else if (ev === "error") throw new Error(obj.error);
    }
  }
  return done;
}

function status(id, text, error) {
  const el = $(id);
  el.textContent = text || "";
  el.classList.toggle("error", !!error);
}

async function busy(id, what, fn) {
  status(id, what + " …");
  const t0 = performance.now();
  try {
    const out = await fn();
    status(id, "done in " + ((performance.now() - t0) / 1000).toFixed(2) + " s");
    return out;
  } catch (e) {
    status(id, e.message, true);
    return undefined;
  }
}

// -- tabs and the run pickers -----------------------------------------------------------------------
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("#tabs button")) x.classList.toggle("active", x === b);
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === "tab-" + b.dataset.tab);
    if (b.dataset.tab === "runs") { refreshCurves(true); showReport(); }
  });
}

function run(name) { return RUNS.find((r) => r.name === name); }

function fillPickers() {
  for (const sel of document.querySelectorAll("select[data-verb]")) {
    const keep = sel.value;
    sel.innerHTML = "";
    if (sel.dataset.same) sel.add(new Option("the same model (two samples)", ""));
    for (const r of RUNS.filter((r) => r.verbs.includes(sel.dataset.verb))) {
      sel.add(new Option(r.name + "  (" + r.family + (r.condition && r.condition !== "none" ? ", " + r.condition : "") + ")", r.name));
    }
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    if (!sel.options.length) sel.add(new Option("(no run can do this here)", ""));
  }
  const tb = document.querySelector("#runs-table tbody");
  tb.innerHTML = "";
  for (const r of RUNS) {
    const tr = tb.insertRow();
    for (const v of [r.name, r.family, r.kind, r.verbs.join(", ")]) tr.insertCell().textContent = v;
  }
  imageRunChanged();
}

async function loadRuns() {
  try {
    RUNS = (await api("/api/runs")).runs;
    const h = await api("/api/health");
    $("server").textContent = "genlab " + h.version + " · " + RUNS.length + " runs and models";
  } catch (e) {
    $("server").textContent = "cannot reach the server: " + e.message;
  }
  fillPickers();
}

// -- images ---------------------------------------------------------------------------------------------
function showBlob(img, blob) {
  if (img._url) URL.revokeObjectURL(img._url);
  img._url = URL.createObjectURL(blob);
  img.src = img._url;
}

function imageRunChanged() {
  const r = run($("img-run").value) || {};
  $("img-class-box").hidden = !(r.classes && r.classes.length);
  if (r.classes) {
    const cls = $("img-class");
    cls.innerHTML = "";
    cls.add(new Option("any", ""));
    r.classes.forEach((c, i) => cls.add(new Option(c, String(i))));
  }
  $("img-prompt-box").hidden = r.condition !== "text";
  $("img-walk-to-box").hidden = r.condition !== "text";
  $("img-trunc-box").hidden = !(r.verbs || []).includes("truncation");
}
$("img-run").addEventListener("change", imageRunChanged);
$("img-trunc").addEventListener("input", () => { $("img-trunc-val").textContent = (+$("img-trunc").value).toFixed(2); });
$("mix-trunc").addEventListener("input", () => { $("mix-trunc-val").textContent = (+$("mix-trunc").value).toFixed(2); });

function sampleBody() {
  const r = run($("img-run").value) || {};
  const b = {};
  const seeds = $("img-seeds").value.trim();
  if (seeds) b.seeds = seeds; else { b.n = +$("img-n").value; b.seed = +$("img-seed").value; }
  if (!$("img-class-box").hidden && $("img-class").value !== "") b.label = +$("img-class").value;
  if (r.condition === "text" && $("img-prompt").value.trim()) b.prompt = $("img-prompt").value.trim();
  if (!$("img-trunc-box").hidden) b.trunc = +$("img-trunc").value;
  return b;
}

async function sample() {
  const name = $("img-run").value;
  if (!name) return status("img-status", "no image run here: train one (genlab train vae|gan|stylegan) into --runs", true);
  const blob = await busy("img-status", "sampling", () => api("/api/runs/" + encodeURIComponent(name) + "/sample", sampleBody()));
  if (blob) showBlob($("img-out"), blob);
}
$("img-sample").addEventListener("click", sample);
$("img-next").addEventListener("click", () => { $("img-seed").value = +$("img-seed").value + 1; $("img-seeds").value = ""; sample(); });
$("img-walk").addEventListener("click", async () => {
  const name = $("img-run").value;
  const r = run(name) || {};
  const b = { pairs: 4, steps: 10, seed: +$("img-seed").value };
  if (r.condition === "text" && $("img-prompt").value.trim() && $("img-walk-to").value.trim()) {
    b.prompts = [$("img-prompt").value.trim(), $("img-walk-to").value.trim()];
  }
  const blob = await busy("img-status", "walking", () => api("/api/runs/" + encodeURIComponent(name) + "/interpolate", b));
  if (blob) showBlob($("img-out"), blob);
});
$("img-npy").addEventListener("click", async (ev) => {
  ev.preventDefault();
  const name = $("img-run").value;
  const blob = await busy("img-status", "sampling an array", () =>
    api("/api/runs/" + encodeURIComponent(name) + "/sample", { ...sampleBody(), format: "npy" }));
  if (!blob) return;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name + "-samples.npy"; a.click();
});

// -- style mixing -----------------------------------------------------------------------------------------
$("mix-go").addEventListener("click", async () => {
  const name = $("mix-run").value;
  if (!name) return status("mix-status", "no style-based generator here (genlab train stylegan)", true);
  const blob = await busy("mix-status", "mixing", () => api("/api/runs/" + encodeURIComponent(name) + "/style-mix", {
    rows: $("mix-rows").value, cols: $("mix-cols").value, styles: $("mix-styles").value, trunc: +$("mix-trunc").value }));
  if (blob) showBlob($("mix-out"), blob);
});

// -- text: generate, chat ------------------------------------------------------------------------------------
let genAbort = null;
$("gen-go").addEventListener("click", async () => {
  const name = $("txt-model").value;
  $("gen-out").textContent = "";
  genAbort = new AbortController();
  $("gen-go").disabled = true; $("gen-stop").disabled = false;
  const t0 = performance.now();
  let first = null;
  status("gen-status", "generating …");
  try {
    const done = await stream("/api/runs/" + encodeURIComponent(name) + "/generate",
      { prompt: $("gen-prompt").value, max_new_tokens: +$("txt-max").value, temperature: +$("txt-temp").value },
      (t) => { if (first === null) first = performance.now() - t0; $("gen-out").textContent += t; }, genAbort.signal);
    const s = done && done.stats;
    status("gen-status", "first token after " + (first || 0).toFixed(0) + " ms" +
      (s && s.decode_s > 0 ? ", " + (s.decode_tokens / s.decode_s).toFixed(1) + " tokens/s" : ""));
  } catch (e) {
    status("gen-status", e.name === "AbortError" ? "stopped" : e.message, e.name !== "AbortError");
  }
  $("gen-go").disabled = false; $("gen-stop").disabled = true;
});
$("gen-stop").addEventListener("click", () => genAbort && genAbort.abort());

let chatId = null;
function addMsg(log, who, text, cls) {
  const d = document.createElement("div");
  d.className = "msg" + (cls ? " " + cls : "");
  const b = document.createElement("b"); b.textContent = who + ": ";
  const span = document.createElement("span"); span.textContent = text;
  d.append(b, span);
  log.append(d);
  log.scrollTop = log.scrollHeight;
  return span;
}
async function newChat() {
  const name = $("txt-model").value;
  $("chat-log").innerHTML = "";
  const sys = $("chat-system").value.trim();
  const r = await busy("chat-status", "starting a chat", () => api("/api/chats", sys ? { model: name, system: sys } : { model: name }));
  chatId = r ? r.id : null;
  return chatId;
}
$("chat-new").addEventListener("click", newChat);
$("chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  if (!chatId && !(await newChat())) return;
  $("chat-input").value = "";
  addMsg($("chat-log"), "you", text);
  const span = addMsg($("chat-log"), "model", "");
  $("chat-send").disabled = true;
  status("chat-status", "replying …");
  try {
    await stream("/api/chats/" + chatId + "/messages",
      { content: text, max_new_tokens: +$("txt-max").value, temperature: +$("txt-temp").value },
      (t) => { span.textContent += t; });
    status("chat-status", "");
  } catch (e) { status("chat-status", e.message, true); }
  $("chat-send").disabled = false;
});

// -- the game --------------------------------------------------------------------------------------------------
let gameId = null;
async function loadLevels() {
  try {
    const lv = (await api("/api/game/levels")).levels;
    for (const l of lv) $("game-level").add(new Option(l.level + ": " + l.description, String(l.level)));
    $("game-level").value = "1";
  } catch (e) { status("game-status", e.message, true); }
}
$("game-new").addEventListener("click", async () => {
  $("game-log").innerHTML = "";
  const r = await busy("game-status", "hiding a new secret", () =>
    api("/api/game", { model: $("game-model").value, level: +$("game-level").value }));
  gameId = r ? r.id : null;
  if (r) { $("game-desc").textContent = "Level " + r.level + ": " + r.description; status("game-status", "ask away"); }
});
$("game-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("game-input").value.trim();
  if (!text) return;
  if (!gameId) return status("game-status", "start a round first (New round)", true);
  $("game-input").value = "";
  addMsg($("game-log"), "you", text);
  const r = await busy("game-status", "the model is thinking", () => api("/api/game/" + gameId + "/turn", { prompt: text }));
  if (r) addMsg($("game-log"), "model", r.reply + (r.refused ? "   [" + r.blocked_by + "]" : ""), r.refused ? "refused" : "");
});
$("guess-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!gameId) return status("game-status", "start a round first (New round)", true);
  const r = await busy("game-status", "checking", () => api("/api/game/" + gameId + "/guess", { word: $("game-guess").value }));
  if (!r) return;
  gameId = null;
  status("game-status", (r.correct ? "Right! " : "Wrong: the round is over. ") + "(" + r.turns + " turns) — New round for another secret");
  $("game-status").className = "status " + (r.correct ? "good" : "bad");
});

// -- rank two responses -------------------------------------------------------------------------------------------
let rankId = null;
function rankButtons(on) { for (const id of ["rank-pick-first", "rank-pick-second", "rank-tie"]) $(id).disabled = !on; }
$("rank-go").addEventListener("click", async () => {
  const a = $("rank-a").value, b = $("rank-b").value;
  $("rank-first").textContent = ""; $("rank-second").textContent = ""; rankButtons(false);
  const r = await busy("rank-status", "two replies", () => api("/api/rank",
    { prompt: $("rank-prompt").value, models: b ? [a, b] : [a], max_new_tokens: +$("rank-max").value }));
  if (!r) return;
  rankId = r.id;
  $("rank-first").textContent = r.replies[0]; $("rank-second").textContent = r.replies[1];
  rankButtons(true);
});
async function choose(choice) {
  rankButtons(false);
  const r = await busy("rank-status", "storing", () => api("/api/rank/" + rankId, { choice }));
  if (r) {
    $("rank-file").textContent = r.stored;
    status("rank-status", "stored: " + r.pairs + " pairs, " + r.ties + " ties so far (first: " + r.models[0] + ", second: " + r.models[1] + ")");
  }
}
$("rank-pick-first").addEventListener("click", () => choose("first"));
$("rank-pick-second").addEventListener("click", () => choose("second"));
$("rank-tie").addEventListener("click", () => choose("tie"));

// -- real or fake? --------------------------------------------------------------------------------------------------
let rfId = null;
function rfButtons(on) { $("rf-real").disabled = !on; $("rf-fake").disabled = !on; }
function showTally(t) {
  $("rf-tally").textContent = t.samples_shown
    ? "Samples taken for real: " + t.samples_taken_for_real + " of " + t.samples_shown + " (fooling rate " +
      (100 * t.fooling_rate).toFixed(0) + "%, 95% CI " + (100 * t.fooling_rate_ci95[0]).toFixed(0) + "–" +
      (100 * t.fooling_rate_ci95[1]).toFixed(0) + "%); people right " + (100 * t.accuracy).toFixed(0) + "% of " + t.judgements + " times"
    : "No samples judged yet.";
}
$("rf-new").addEventListener("click", async () => {
  const name = $("rf-run").value;
  rfButtons(false);
  const r = await busy("rf-status", "choosing", () => api("/api/runs/" + encodeURIComponent(name) + "/real-or-fake", {}));
  if (!r) return;
  rfId = r.id; $("rf-img").src = r.image; rfButtons(true); status("rf-status", "Real or fake?");
});
async function judge(guess) {
  rfButtons(false);
  const r = await busy("rf-status", "checking", () => api("/api/real-or-fake/" + rfId, { guess }));
  if (!r) return;
  status("rf-status", (r.correct ? "Right" : "Wrong") + ": it was " + (r.shown === "real" ? "a real image" : "a sample"));
  showTally(r.tally);
}
$("rf-real").addEventListener("click", () => judge("real"));
$("rf-fake").addEventListener("click", () => judge("fake"));
$("rf-run").addEventListener("change", async () => {
  const name = $("rf-run").value;
  if (name) { try { showTally(await api("/api/runs/" + encodeURIComponent(name) + "/human-eval")); } catch (e) { /* none yet */ } }
});

// -- runs: loss curves, refreshing while a run trains -------------------------------------------------------------
let curve = { name: null, records: [], next: 0 };
const COLORS = ["#2f6fdd", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];
function numericKeys(recs) {
  const keys = new Set();
  for (const r of recs) for (const [k, v] of Object.entries(r)) {
    if (typeof v === "number" && !["epoch", "iter", "step", "time", "elapsed", "world_size"].includes(k)) keys.add(k);
  }
  return [...keys].sort();
}
function drawCurves() {
  const c = $("curve"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const keys = [...$("curve-keys").selectedOptions].map((o) => o.value);
  const series = keys.map((k) => curve.records.filter((r) => typeof r[k] === "number").map((r, i) =>
    [r.epoch ?? r.iter ?? r.step ?? i + 1, r[k]]));
  const pts = series.flat();
  if (!pts.length) { g.fillStyle = "#66707a"; g.fillText("no numbers to plot yet", 20, 30); return; }
  const [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  const L = 60, R = 20, T = 20, B = 30, W = c.width - L - R, H = c.height - T - B;
  const X = (x) => L + (x1 === x0 ? W / 2 : (x - x0) / (x1 - x0) * W);
  const Y = (y) => T + (y1 === y0 ? H / 2 : (1 - (y - y0) / (y1 - y0)) * H);
  g.strokeStyle = "#d8dde3"; g.strokeRect(L, T, W, H);
  g.fillStyle = "#66707a"; g.font = "12px system-ui";
  g.fillText(y1.toPrecision(4), 4, T + 10); g.fillText(y0.toPrecision(4), 4, T + H);
  g.fillText(String(x0), L, T + H + 18); g.fillText(String(x1), L + W - 30, T + H + 18);
  series.forEach((s, i) => {
    g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 2; g.beginPath();
    s.forEach(([x, y], j) => (j ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    g.fillStyle = COLORS[i % COLORS.length]; g.fillText(keys[i], L + 10, T + 16 + 16 * i);
  });
}
async function refreshCurves(force) {
  const name = $("curve-run").value;
  if (!name) return;
  if (name !== curve.name) curve = { name, records: [], next: 0 };
  try {
    const r = await api("/api/runs/" + encodeURIComponent(name) + "/metrics?since=" + curve.next);
    if (r.next < curve.next) { curve = { name, records: [], next: 0 }; return refreshCurves(true); }   // rewritten
    curve.records.push(...r.records); curve.next = r.next;
    if (r.records.length || force) {
      const sel = $("curve-keys"), chosen = new Set([...sel.selectedOptions].map((o) => o.value));
      const keys = numericKeys(curve.records);
      if (keys.join() !== [...sel.options].map((o) => o.value).join()) {
        sel.innerHTML = "";
        for (const k of keys) sel.add(new Option(k, k, false, chosen.size ? chosen.has(k) : /loss/.test(k)));
      }
      drawCurves();
    }
    status("curve-status", curve.records.length + " records");
  } catch (e) { status("curve-status", e.message, true); }
}
async function showReport() {
  const r = run($("curve-run").value);
  const has = !!(r && r.verbs.includes("report"));
  $("report-box").hidden = !has;
  if (has) {
    try { $("report").textContent = (await api("/api/runs/" + encodeURIComponent(r.name) + "/report")).table; }
    catch (e) { $("report").textContent = e.message; }
  }
}
$("curve-run").addEventListener("change", () => { refreshCurves(true); showReport(); });
$("curve-keys").addEventListener("change", drawCurves);
setInterval(() => {
  if ($("curve-live").checked && $("tab-runs").classList.contains("active")) refreshCurves(false);
}, 3000);

loadRuns();
loadLevels();
