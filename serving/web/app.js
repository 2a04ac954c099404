// The page over the explanation API (GET /v1/methods, POST /v1/predict, /v1/explain/{m}, /v1/explain/{m}/picture,
// /v1/jobs/{m}, GET /v1/jobs/{id}). Plain JavaScript, no build step, no external files: it must work offline.
"use strict";

const CONFIG = JSON.parse(document.querySelector('meta[name="interp-ray"]').content);
const TOKEN_KEY = "interp-ray-token:" + CONFIG.base;
const POLL_MS = 400;
const $ = (id) => document.getElementById(id);

const state = { info: null, methods: {}, image: null, bitmap: null, run: 0 };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// ---------------------------------------------------------------------------------------------------- the API

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    if (resp.status === 401) showAuth();
    throw new ApiError(resp.status, message);
  }
  return resp;
}

async function json(path, options) { return (await api(path, options)).json(); }

function imageForm(extra = {}) {
  const form = new FormData();
  form.append("image", state.image.blob, state.image.name);
  if ($("resize").checked) form.append("resize", "true");
  for (const [k, v] of Object.entries(extra)) form.append(k, v);
  return form;
}

// ---------------------------------------------------------------------------------------------------- messages

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : String(err.message || err);
  box.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

function showAuth() { $("auth").hidden = false; $("token").focus(); }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ---------------------------------------------------------------------------------------------------- start

async function start() {
  clearError();
  $("links").replaceChildren(...Object.entries(CONFIG.links || {}).map(([name, href]) => el("a", { href, text: name })));
  let body;
  try {
    body = await json("v1/methods");
  } catch (err) {
    showError(err);
    return;
  }
  $("auth").hidden = true;
  state.info = body;
  const m = body.model;
  $("model").textContent = `${CONFIG.title ? CONFIG.title + ": " : ""}${m.name}, ${m.input_shape.join("×")} input, ` +
    `${m.num_classes} classes`;
  const select = $("method");
  select.replaceChildren();
  for (const meth of body.methods) {
    state.methods[meth.name] = meth;
    select.append(el("option", { value: meth.name, text: meth.name + (meth.slow ? " (slow: runs as a job)" : "") }));
  }
  const skipped = Object.entries(body.skipped || {});
  $("skipped-box").hidden = !skipped.length;
  $("skipped").replaceChildren(...skipped.map(([n, why]) => el("li", {}, el("b", { text: n }), ": " + why)));
  methodChanged();
  loadSamples();
}

async function loadSamples() {
  let index = [];
  try {
    index = await (await fetch("static/samples/index.json")).json();
  } catch (e) { return; }
  const shape = state.info.model.input_shape.join("x");
  const box = $("samples");
  box.replaceChildren();
  for (const s of index.filter((s) => s.shape.join("x") === shape)) {
    const b = el("button", { type: "button", title: `${s.dataset} test image, class ${s.label_name}`,
                             "data-file": s.file },
                 el("img", { src: "static/samples/" + s.file, alt: `sample ${s.label_name}` }));
    b.addEventListener("click", async () => {
      const blob = await (await fetch("static/samples/" + s.file)).blob();
      useImage(blob, s.file);
    });
    box.append(b);
  }
}

// ---------------------------------------------------------------------------------------------------- the image

async function useImage(blob, name) {
  clearError();
  state.image = { blob, name };
  state.bitmap = null;
  $("result").replaceChildren();
  $("top").replaceChildren();
  $("status").textContent = "";
  try {
    state.bitmap = await createImageBitmap(blob);
    const c = $("preview");
    c.width = state.bitmap.width;
    c.height = state.bitmap.height;
    c.getContext("2d").drawImage(state.bitmap, 0, 0);
    $("image-info").textContent = `${name}: ${state.bitmap.width}×${state.bitmap.height}`;
    $("preview-box").hidden = false;
  } catch (e) {
    $("preview-box").hidden = true;  // not an image the browser can read: the API says why below
  }
  $("explain").disabled = false;
  await predict();
}

async function predict() {
  $("predict-empty").hidden = true;
  try {
    const body = await json("v1/predict", { method: "POST", body: imageForm() });
    const probs = body.predictions[0].probabilities;
    const names = state.info.model.class_names;
    const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
    $("top").replaceChildren(...order.map(([p, i]) => el("li", { "data-class": String(i) },
      el("b", { text: names[i] || String(i) }), ` ${(100 * p).toFixed(1)}%`,
      el("span", { class: "bar", style: `width:${Math.max(2, 120 * p)}px` }))));
  } catch (err) {
    $("predict-empty").hidden = false;
    $("predict-empty").textContent = "No prediction.";
    showError(err);
  }
}

// ---------------------------------------------------------------------------------------------------- methods

function methodChanged() {
  const meth = state.methods[$("method").value];
  if (!meth) return;
  $("method-doc").textContent = meth.doc || "";
  $("method-tags").replaceChildren(...["learned", "slow"].filter((t) => meth[t]).map((t) => el("span", { text: t })));
  buildForm(meth.params || {});
  $("result").replaceChildren();
  $("status").textContent = "";
}

function plainType(prop) {
  // pydantic writes optional fields as anyOf [{…}, {type: null}]
  if (prop.anyOf) {
    const some = prop.anyOf.find((p) => p.type !== "null");
    return { ...some, ...prop, anyOf: undefined, nullable: true };
  }
  return prop;
}

function buildForm(schema) {
  const form = $("params");
  form.replaceChildren();
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const prop = plainType(raw);
    const id = "param-" + name;
    let input;
    if (name === "target") {
      input = el("select", { id });
      input.append(el("option", { value: "-1", text: "the predicted class" }));
      state.info.model.class_names.forEach((n, i) => input.append(el("option", { value: String(i), text: n })));
    } else if (prop.enum) {
      input = el("select", { id });
      if (prop.nullable) input.append(el("option", { value: "", text: "(default)" }));
      for (const v of prop.enum) input.append(el("option", { value: v, text: v }));
    } else if (prop.type === "boolean") {
      input = el("input", { id, type: "checkbox" });
      input.checked = prop.default === true;
    } else if (prop.type === "integer" || prop.type === "number") {
      input = el("input", { id, type: "number", step: prop.type === "integer" ? "1" : "any" });
      const min = prop.minimum ?? prop.exclusiveMinimum, max = prop.maximum ?? prop.exclusiveMaximum;
      if (min !== undefined) input.min = min;
      if (max !== undefined) input.max = max;
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      else input.placeholder = "default";
    } else {
      input = el("input", { id, type: "text" });
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
    }
    input.dataset.name = name;
    input.dataset.type = prop.type || "string";
    form.append(el("label", { for: id, text: prop.title || name }), input);
    if (prop.description) form.append(el("div", { class: "help", text: prop.description }));
  }
}

function formParams() {
  const params = {};
  for (const input of $("params").querySelectorAll("[data-name]")) {
    const { name, type } = input.dataset;
    if (input.type === "checkbox") { params[name] = input.checked; continue; }
    if (input.value === "") continue;  // unset: the method's default
    params[name] = type === "integer" ? parseInt(input.value, 10) : type === "number" ? Number(input.value) : input.value;
  }
  return params;
}

// ---------------------------------------------------------------------------------------------------- explain

async function explain() {
  if (!state.image) return;
  clearError();
  const run = ++state.run;
  const method = $("method").value;
  const meth = state.methods[method] || { slow: false };  // a stale page: the API says what is wrong
  const params = formParams();
  const extra = { params: JSON.stringify(params) };
  $("result").replaceChildren();
  $("explain").disabled = true;
  try {
    let body;
    if (meth.slow) {
      $("status").textContent = "submitting job …";
      let job = await json(`v1/jobs/${method}`, { method: "POST", body: imageForm(extra) });
      while (job.status === "queued" || job.status === "running") {
        $("status").textContent = `job ${job.id.slice(0, 8)}: ${job.status} (${job.done}/${job.images})`;
        await new Promise((r) => setTimeout(r, POLL_MS));
        if (run !== state.run) return;
        job = await json(job.url.replace(/^\//, ""));
      }
      $("status").textContent = `job ${job.id.slice(0, 8)}: ${job.status}`;
      if (job.status !== "succeeded") {
        throw new ApiError(job.error ? job.error.status : 500, job.error ? job.error.message : `job ${job.status}`);
      }
      body = job.result;
    } else {
      $("status").textContent = "explaining …";
      body = await json(`v1/explain/${method}`, { method: "POST", body: imageForm(extra) });
      $("status").textContent = "done";
    }
    if (run !== state.run) return;
    render(method, body.explanations[0], extra);
  } catch (err) {
    if (run === state.run) { $("status").textContent = "failed"; showError(err); }
  } finally {
    if (run === state.run) $("explain").disabled = false;
  }
}

function render(method, exp, extra) {
  const out = $("result");
  const name = exp.label_name || String(exp.label);
  out.append(el("div", { class: "label", id: "explained-label", "data-label": String(exp.label) },
                "explained class: ", el("b", { text: name })));
  if (exp.explains) out.append(explains(exp.explains));
  if (exp.sentence !== null && exp.sentence !== undefined) {
    out.append(el("blockquote", { class: "sentence", id: "sentence", text: exp.sentence }));
  }
  if (exp.neurons && Object.keys(exp.neurons).length) {
    const list = el("ul", { class: "neurons", id: "neurons" });
    for (const [n, label] of Object.entries(exp.neurons)) {
      list.append(el("li", { "data-neuron": n }, el("b", { text: "neuron " + n }), ": " + label));
    }
    out.append(el("div", {}, el("h3", { text: "neurons that drove the caption" }), list));
  }
  if (exp.saliency) out.append(overlay(exp.saliency));
  if (exp.attributes) {
    const items = Object.entries(exp.attributes).sort((a, b) => b[1] - a[1]);
    const list = el("ol", { class: "attributes", id: "attributes" });
    for (const [a, r] of items) list.append(el("li", { "data-attribute": a, "data-relevance": String(r) }, el("b", { text: a }), ` relevance ${r.toFixed(3)}`));
    const box = el("div", {}, el("h3", { text: items.length ? "relevant attributes" : "no attribute is relevant above 1/τ" }), list);
    out.append(box);
  }
  if (exp.path && exp.path.level1 !== undefined) {
    const votes = exp.path.votes || {};
    const v = votes[exp.label] ?? votes[String(exp.label)];
    out.append(el("p", { class: "route", id: "route",
                         text: `level-1 cluster ${exp.path.level1} → level-2 cluster ${exp.path.level1}.${exp.path.level2}` +
                               ` → votes ${v !== undefined ? (100 * v).toFixed(0) + "%" : "?"} → ${name}` }));
  }
  const meth = state.methods[method];
  if (meth.slow) {
    const b = el("button", { type: "button", id: "draw" , text: "draw the report figure (computes it again)" });
    b.addEventListener("click", () => { b.remove(); picture(method, extra); });
    out.append(b);
  } else {
    picture(method, extra);
  }
}

function said(w, prefix = "") {
  const name = w[prefix + "label_name"] ?? String(w[prefix + "label"]);
  return `${name} (${(100 * w[prefix + "probability"]).toFixed(1)}%)`;
}

function explains(w) {
  // Whose prediction the answer explains (Explanation.explains): the served classifier's, or a predictor the method
  // carries (FLINT's jointly trained f), with the served classifier's prediction beside it.
  const p = el("p", { class: "explains", id: "explains", "data-model": w.model, "data-agrees": String(w.agrees) });
  if (w.model === "classifier") {
    p.append("explains the served classifier's prediction: ", el("b", { text: said(w) }));
  } else {
    p.append(`explains the prediction of ${w.about}, not the served classifier's: `, el("b", { text: said(w) }));
    if (w.classifier_label !== undefined && w.classifier_label !== null) {
      p.append("; the served classifier predicts ", el("b", { text: said(w, "classifier_") }),
               w.agrees ? " (the same class)" : " (another class)");
    }
  }
  return p;
}

async function picture(method, extra) {
  const run = state.run;
  const holder = el("figure", { id: "picture-box" }, el("figcaption", { text: "drawing the report figure …" }));
  $("result").append(holder);
  try {
    const blob = await (await api(`v1/explain/${method}/picture`, { method: "POST", body: imageForm(extra) })).blob();
    if (run !== state.run) return;
    const img = el("img", { class: "picture", id: "picture", alt: `${method} explanation` });
    img.src = URL.createObjectURL(blob);
    holder.replaceChildren(img, el("figcaption", { text: "the reports' figure (POST v1/explain/" + method + "/picture)" }));
  } catch (err) {
    holder.remove();
    if (run === state.run) showError(err);
  }
}

function jet(v) {
  // matplotlib's "jet", as the reports' overlays use it
  const r = Math.min(Math.max(1.5 - Math.abs(4 * v - 3), 0), 1);
  const g = Math.min(Math.max(1.5 - Math.abs(4 * v - 2), 0), 1);
  const b = Math.min(Math.max(1.5 - Math.abs(4 * v - 1), 0), 1);
  return [255 * r, 255 * g, 255 * b];
}

function overlay(saliency) {
  // The saliency map over the image at the image's own size (scaled up by CSS, pixel for pixel).
  const h = saliency.length, w = saliency[0].length;
  const c = el("canvas", { id: "overlay", class: "pixelated", title: "saliency over the image" });
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0, w, h);
  const base = ctx.getImageData(0, 0, w, h);
  const flat = saliency.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat);
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      const v = hi > lo ? (saliency[i][j] - lo) / (hi - lo) : 0;
      const [r, g, b] = jet(v);
      const k = 4 * (i * w + j);
      base.data[k] = 0.5 * base.data[k] + 0.5 * r;
      base.data[k + 1] = 0.5 * base.data[k + 1] + 0.5 * g;
      base.data[k + 2] = 0.5 * base.data[k + 2] + 0.5 * b;
      base.data[k + 3] = 255;
    }
  }
  ctx.putImageData(base, 0, 0);
  return el("figure", {}, c, el("figcaption", { text: `saliency overlay, ${w}×${h}` }));
}

// ---------------------------------------------------------------------------------------------------- wiring

$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) useImage(f, f.name); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) useImage(f, f.name);
});
$("method").addEventListener("change", methodChanged);
$("explain").addEventListener("click", explain);
$("resize").addEventListener("change", () => { if (state.image) useImage(state.image.blob, state.image.name); });
$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  start();
});
start();
