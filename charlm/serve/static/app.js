/* charlm playground: everything the page does, talking only to this server's /v1 API.
 * Owns the model selector and API key, the tabs, streaming generation (fetch + SSE over POST),
 * the surprise view (/v1/score), the inside-the-network view (/v1/inspect) and the training
 * curve (an inline SVG from /v1/models/{id}/metrics). No libraries, no outside requests. */
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "charlm-api-key";
const state = { models: [], streaming: null, inspect: null, metrics: null, curveFor: null };

/* ---------- HTTP ---------- */
function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function failure(res) {
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = `${message}: ${body.error.message}`;
  } catch (_) { /* not JSON: keep the status */ }
  return new Error(message);
}

async function api(path, body, signal) {
  const init = body === undefined ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body), signal };
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return res.json();
}

function say(message, kind) {
  const s = $("status");
  s.textContent = message;
  s.className = kind || "";
}
const sayError = (e) => say(e.message || String(e), "error");

/* ---------- models ---------- */
const model = () => state.models.find((m) => m.id === $("model").value);

async function loadModels() {
  try {
    const list = await api("/v1/models");
    state.models = list.data || [];
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
    if (state.models.some((m) => m.id === previous)) select.value = previous;
    modelChanged();
    say(state.models.length ? "" : "The server has no models.");
  } catch (e) {
    $("model-info").textContent = "";
    sayError(e);
  }
}

function modelChanged() {
  const m = model();
  const info = m && m.charlm;
  if (!info) { $("model-info").textContent = ""; return; }
  const tok = info.tokenizer || {};
  const parts = [info.cell, `${info.layers} layer${info.layers === 1 ? "" : "s"}`, `hidden ${info.hidden}`,
    `${tok.kind} tokenizer (${tok.vocab_size})`];
  if (info.parameters) parts.push(`${info.parameters.toLocaleString("en")} parameters`);
  $("model-info").textContent = parts.join(" · ");
  fillLayerState(info.layers, info.cell === "lstm" ? ["hidden", "cell"] : ["hidden"]);
  state.inspect = null;
  state.curveFor = null;
  if (!$("panel-training").hidden) loadCurve();
}

function fillLayerState(layers, states) {
  const layer = $("layer"), st = $("state");
  const keepLayer = layer.value, keepState = st.value;
  layer.replaceChildren(...Array.from({ length: layers }, (_, i) => new Option(String(i), String(i))));
  layer.value = keepLayer !== "" && Number(keepLayer) < layers ? keepLayer : String(layers - 1);
  st.replaceChildren(...states.map((s) => new Option(s, s)));
  st.value = states.includes(keepState) ? keepState : states[0];
}

/* ---------- tabs ---------- */
const tabs = () => Array.from(document.querySelectorAll('[role="tab"]'));

function selectTab(tab, focus) {
  for (const t of tabs()) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  if (tab.id === "tab-training") loadCurve();
}

function tabKeys(e) {
  const all = tabs(), i = all.indexOf(e.target);
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[e.key];
  if (next === undefined) return;
  e.preventDefault();
  selectTab(all[(next + all.length) % all.length], true);
}

/* ---------- generate ---------- */
function num(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function stopStrings() {
  const raw = $("stop").value;
  if (!raw.trim()) return [];
  const pieces = raw.includes("\n") ? raw.split("\n") : raw.split(",");
  return pieces.map((s) => s.trim()).filter((s) => s)
    .map((s) => s.replace(/\\(n|t|\\)/g, (_, c) => ({ n: "\n", t: "\t", "\\": "\\" })[c]));
}

function completionBody() {
  const body = { model: $("model").value, prompt: $("prompt").value, stream: true,
    stream_options: { include_usage: true } };
  const maxTokens = num("max-tokens");
  if (maxTokens !== null) body.max_tokens = maxTokens;
  if ($("greedy").checked) body.greedy = true;
  else {
    const t = num("temperature"), k = num("top-k"), p = num("top-p");
    if (t !== null) body.temperature = t;
    if (k) body.top_k = k;
    if (p !== null && p < 1) body.top_p = p;
  }
  const seed = num("seed");
  if (seed !== null) body.seed = seed;
  const stop = stopStrings();
  if (stop.length) body.stop = stop;
  return body;
}

function setStreaming(controller) {
  state.streaming = controller;
  const b = $("generate");
  b.textContent = controller ? "Stop" : "Generate";
  b.classList.toggle("stop", !!controller);
}

async function generate() {
  if (state.streaming) { state.streaming.abort(); return; }
  if (!$("model").value) { say("Choose a model first.", "error"); return; }
  const body = completionBody();
  const controller = new AbortController();
  setStreaming(controller);
  say("Generating…");
  $("gen-stats").textContent = "";
  const out = $("output");
  out.querySelector(".prompt").textContent = body.prompt;
  const gen = document.createTextNode("");
  out.querySelector(".gen").replaceChildren(gen);
  const started = performance.now();
  let chunks = 0, finish = null, usage = null, failed = false, pending = "", frame = 0;
  const flush = () => { // one DOM update per frame, however fast the tokens come
    frame = 0;
    gen.appendData(pending);
    pending = "";
    out.scrollTop = out.scrollHeight;
  };
  try {
    const res = await fetch("/v1/completions", { method: "POST", headers: headers(true),
      body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw await failure(res);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    read: for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") break read;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.text) {
            pending += choice.text;
            chunks += 1;
            frame = frame || requestAnimationFrame(flush);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped by you";
    else { failed = true; sayError(e); }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    flush();
    setStreaming(null);
  }
  const seconds = (performance.now() - started) / 1000;
  const tokens = usage ? usage.completion_tokens : chunks;
  const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
  if (failed && !gen.data) return;
  $("gen-stats").textContent = `finish: ${finish || "–"} · ${tokens} tokens in ${seconds.toFixed(2)} s · ${rate} tokens/s`;
  if (!failed) say(`Done: ${finish || "ended"}.`, "ok");
  const text = body.prompt + gen.data;
  if (text) for (const id of ["surprise-text", "inside-text"]) $(id).value = text;
}

/* ---------- character views (shared) ---------- */
/* Tokens carry code-point offsets into the text: each token owns text[offset, next offset).
 * Tokens sharing an offset (bytes of one character) merge into the last of them. */
function segments(text, tokens) {
  const chars = Array.from(text);
  const out = [];
  let pending = 0;
  if (tokens.length && tokens[0].offset > 0) out.push({ text: chars.slice(0, tokens[0].offset).join(""), index: -1 });
  tokens.forEach((tok, i) => {
    pending += tok.logprob || 0;
    const end = i + 1 < tokens.length ? tokens[i + 1].offset : chars.length;
    if (end <= tok.offset) return;
    out.push({ text: chars.slice(tok.offset, end).join(""), index: i, logprob: pending });
    pending = 0;
  });
  return out;
}

function renderChars(view, segs, paint) {
  const frag = document.createDocumentFragment();
  for (const seg of segs) {
    for (const piece of seg.text.split(/(\n)/)) {
      if (!piece) continue;
      const span = document.createElement("span");
      span.textContent = piece;
      if (piece === "\n") span.className = "nl";
      if (seg.index >= 0) paint(span, seg);
      frag.append(span);
    }
  }
  view.replaceChildren(frag);
}

function readout(view, target) {
  view.addEventListener("mouseover", (e) => {
    if (e.target.title && e.target.parentElement === view) $(target).textContent = e.target.title;
  });
}

function legend(id, caption, stops) {
  const items = stops.map(([label, colour]) => {
    const s = document.createElement("span");
    s.className = "swatch";
    s.style.backgroundColor = colour;
    s.textContent = label;
    return s;
  });
  const c = document.createElement("span");
  c.className = "caption";
  c.textContent = caption;
  $(id).replaceChildren(c, ...items);
}

const show = (ch) => (ch === "\n" ? "\\n" : ch === "\t" ? "\\t" : ch === " " ? "␠" : ch);

/* ---------- surprise ---------- */
const HOT_BITS = 8;
function surpriseColour(bits) {
  const t = Math.min(Math.max(bits / HOT_BITS, 0), 1);
  const [h, l] = t < 0.5 ? [200 - 290 * t, 95 - 22 * t] : [55 - 110 * (t - 0.5), 84 - 24 * (t - 0.5)];
  return `hsl(${h.toFixed(0)}, 85%, ${l.toFixed(1)}%)`;
}

async function analyse() {
  const text = $("surprise-text").value;
  if (!text) { say("Type or paste a text to analyse.", "error"); return; }
  say("Scoring…");
  try {
    const r = await api("/v1/score", { model: $("model").value, text, token_logprobs: true });
    const segs = segments(text, r.token_logprobs || []);
    renderChars($("surprise-view"), segs, (span, seg) => {
      const bits = -seg.logprob / Math.LN2;
      span.style.backgroundColor = surpriseColour(bits);
      span.title = `${show(span.textContent)}  ${bits.toFixed(2)} bits  (p = ${Math.exp(seg.logprob).toPrecision(3)})`;
    });
    $("surprise-bpc").textContent = `${r.bits_per_char.toFixed(3)} bits per character · ${r.chars} characters, ${r.tokens} tokens`;
    say("");
  } catch (e) { sayError(e); }
}

/* ---------- inside the network ---------- */
function activationColour(v, scale) {
  const t = Math.min(Math.max(v / scale, -1), 1);
  return t < 0 ? `hsl(215, 85%, ${(100 + 36 * t).toFixed(1)}%)` : `hsl(28, 95%, ${(100 - 38 * t).toFixed(1)}%)`;
}

async function inspect(unit) {
  const text = $("inside-text").value;
  if (!text) { say("Type or paste a text to look inside.", "error"); return; }
  const body = { model: $("model").value, text, layer: Number($("layer").value), state: $("state").value };
  if (unit !== undefined && unit !== null && unit !== "") body.unit = Number(unit);
  say("Running the network…");
  try {
    const r = await api("/v1/inspect", body);
    state.inspect = r;
    fillLayerState(r.layers, r.states);
    $("layer").value = String(r.layer);
    $("state").value = r.state;
    const u = $("unit");
    u.max = String(r.units - 1);
    u.value = String(r.unit);
    const acts = r.activations;
    const scale = Math.max(...acts.map(Math.abs)) || 1;
    renderChars($("inside-view"), segments(text, r.tokens), (span, seg) => {
      const v = acts[seg.index];
      span.style.backgroundColor = activationColour(v, scale);
      span.title = `${show(span.textContent)}  unit ${r.unit} = ${v.toFixed(4)}`;
    });
    const f = (x) => x.toFixed(2);
    legend("inside-legend", `${r.state} · layer ${r.layer} · unit ${r.unit}`,
      [-1, -0.5, 0, 0.5, 1].map((t) => [f(t * scale), activationColour(t * scale, scale)]));
    rankList("most-active", r.ranking.active, r.unit);
    rankList("most-changing", r.ranking.changing, r.unit);
    say("");
  } catch (e) { sayError(e); }
}

function rankList(id, items, current) {
  $(id).replaceChildren(...(items || []).map(({ unit, score }) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.unit = unit;
    b.textContent = `${unit} · ${score.toFixed(2)}`;
    b.setAttribute("aria-pressed", String(unit === current));
    b.title = `Show unit ${unit}`;
    li.append(b);
    return li;
  }));
}

function stepUnit(delta) {
  const units = state.inspect ? state.inspect.units : model() ? model().charlm.hidden : 1;
  const current = num("unit") ?? (state.inspect ? state.inspect.unit : 0);
  inspect(String((current + delta + units) % units));
}

/* ---------- training curve ---------- */
async function loadCurve() {
  const id = $("model").value;
  if (!id || state.curveFor === id) return;
  try {
    state.metrics = await api(`/v1/models/${encodeURIComponent(id)}/metrics`);
    state.curveFor = id;
    drawCurve();
  } catch (e) { sayError(e); }
}

function ticks(lo, hi, count) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  for (let i = first; i <= Math.max(last, first + 1); i++) out.push(+(i * step).toPrecision(12));
  return out;
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawCurve() {
  const m = state.metrics;
  const box = $("curve");
  if (!m) return;
  const x = document.querySelector('input[name="x-axis"]:checked').value;
  const series = [["train", m.train || [], "train loss"], ["val", m.val || [], "validation loss"]]
    .map(([cls, pts, label]) => [cls, pts.filter((p) => p[x] != null && Number.isFinite(p.loss)), label]);
  const all = series.flatMap((s) => s[1]);
  if (!all.length) {
    box.replaceChildren();
    $("curve-summary").textContent = "No training metrics recorded for this model.";
    return;
  }
  const W = 760, H = 360, L = 58, R = 20, T = 18, B = 48;
  const xs = all.map((p) => p[x]), ys = all.map((p) => p.loss);
  const xt = ticks(Math.min(0, ...xs), Math.max(...xs), 7), yt = ticks(Math.min(...ys), Math.max(...ys), 6);
  const [x0, x1, y0, y1] = [xt[0], xt[xt.length - 1], yt[0], yt[yt.length - 1]];
  const sx = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - T - B);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "curve-title" });
  svg.append(el("title", { id: "curve-title" }, `Training and validation loss against ${x === "step" ? "step" : "time"}`));
  const axis = el("g", { class: "axis" });
  for (const v of yt) {
    svg.append(el("line", { class: "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    axis.append(el("text", { x: L - 8, y: sy(v) + 4, "text-anchor": "end" }, v.toString()));
  }
  for (const v of xt) {
    axis.append(el("line", { x1: sx(v), x2: sx(v), y1: H - B, y2: H - B + 5 }));
    axis.append(el("text", { x: sx(v), y: H - B + 19, "text-anchor": "middle" }, v.toLocaleString("en")));
  }
  axis.append(el("path", { d: `M${L},${T}V${H - B}H${W - R}`, fill: "none" }));
  axis.append(el("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, x === "step" ? "step" : "time (s)"));
  axis.append(el("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
    transform: `rotate(-90 14 ${(T + H - B) / 2})` }, "loss (nats/token)"));
  svg.append(axis);
  series.forEach(([cls, pts, label], i) => {
    if (pts.length) {
      const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[x]).toFixed(1)},${sy(p.loss).toFixed(1)}`).join("");
      svg.append(el("path", { class: cls, d }));
      if (cls === "val") for (const p of pts) svg.append(el("circle", { class: cls, cx: sx(p[x]), cy: sy(p.loss), r: 3 }));
    }
    const ly = T + 8 + i * 20;
    svg.append(el("line", { class: cls, x1: W - R - 150, x2: W - R - 124, y1: ly, y2: ly }));
    svg.append(el("text", { x: W - R - 116, y: ly + 4 }, label));
  });
  box.replaceChildren(svg);
  const last = (a) => (a.length ? a[a.length - 1] : null);
  const lt = last(series[0][1]), lv = last(series[1][1]);
  $("curve-summary").textContent = [lt && `last train loss ${lt.loss.toFixed(3)} at step ${lt.step}`,
    lv && `last validation loss ${lv.loss.toFixed(3)} at step ${lv.step}`].filter(Boolean).join(" · ");
}

/* ---------- wiring ---------- */
function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) sessionStorage.setItem(KEY_STORE, key.value.trim());
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  });
  $("model").addEventListener("change", modelChanged);
  for (const t of tabs()) {
    t.addEventListener("click", () => selectTab(t, false));
    t.addEventListener("keydown", tabKeys);
  }
  $("generate").addEventListener("click", generate);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !state.streaming) { e.preventDefault(); generate(); }
  });
  for (const [a, b] of [["surprise-text", "inside-text"], ["inside-text", "surprise-text"]]) {
    $(a).addEventListener("input", () => { $(b).value = $(a).value; });
  }
  $("analyse").addEventListener("click", analyse);
  $("inspect").addEventListener("click", () => inspect(num("unit")));
  $("layer").addEventListener("change", () => state.inspect && inspect(null));
  $("state").addEventListener("change", () => state.inspect && inspect(null));
  $("unit").addEventListener("change", () => inspect(num("unit")));
  $("unit-prev").addEventListener("click", () => stepUnit(-1));
  $("unit-next").addEventListener("click", () => stepUnit(1));
  for (const id of ["most-active", "most-changing"]) {
    $(id).addEventListener("click", (e) => {
      const b = e.target.closest("button[data-unit]");
      if (b) { $("unit").value = b.dataset.unit; inspect(b.dataset.unit); }
    });
  }
  for (const r of document.querySelectorAll('input[name="x-axis"]')) r.addEventListener("change", drawCurve);
  readout($("surprise-view"), "surprise-readout");
  readout($("inside-view"), "inside-readout");
  legend("surprise-legend", "surprise (bits)",
    [0, 1, 2, 3, 4, 5, 6, 7, 8].map((b) => [b === HOT_BITS ? `${b}+` : String(b), surpriseColour(b)]));
  loadModels();
}

init();
