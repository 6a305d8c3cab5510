// pigeon's app: one page, six steps, plain JavaScript over the REST API (no build step, nothing from a CDN).
"use strict";

const $ = (sel) => document.querySelector(sel);
const CSRF = document.querySelector('meta[name="pigeon-csrf"]').content;
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("pigeon-token", params.get("token"));
const TOKEN = sessionStorage.getItem("pigeon-token");
const state = { dataset: null, job: null, run: null, events: null, defaults: {}, charts: {} };

function withToken(url) {  // EventSource and <img> cannot send headers
  return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url;
}

async function api(path, { method = "GET", json, body, headers = {} } = {}) {
  const h = { "X-CSRF-Token": CSRF, ...headers };
  if (TOKEN) h.Authorization = "Bearer " + TOKEN;
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const res = await fetch(path, { method, headers: h, body });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!res.ok) throw new Error((data && data.error && data.error.message) || res.status + " " + res.statusText);
  return data;
}

function showError(err) {
  const box = $("#error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

async function guarded(fn) {
  try { showError(null); return await fn(); } catch (err) { showError(err); }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function chart(id, config) {
  if (state.charts[id]) state.charts[id].destroy();
  state.charts[id] = new Chart($("#" + id), { ...config, options: { animation: false, maintainAspectRatio: false,
    responsive: true, ...(config.options || {}) } });
  return state.charts[id];
}

function fmtSeconds(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min` :
    s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(2) + "%");

// -- tabs ------------------------------------------------------------------------------------------------
function openTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.getAttribute("aria-controls") === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $("#" + tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (name === "evaluate" || name === "keep") refreshRuns();
  if (name === "test") refreshModels();
}
for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => openTab(tab.getAttribute("aria-controls")));
  tab.addEventListener("keydown", (e) => {  // arrow keys move between tabs, as in any tab list
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    const i = tabs.indexOf(tab);
    const next = e.key === "ArrowRight" ? tabs[(i + 1) % tabs.length] : e.key === "ArrowLeft" ?
      tabs[(i - 1 + tabs.length) % tabs.length] : null;
    if (next) { next.focus(); next.click(); }
  });
}

function dropzone(zone, input, onFiles) {
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); onFiles([...e.dataTransfer.files]); });
  input.addEventListener("change", () => { onFiles([...input.files]); input.value = ""; });
}

// -- 1 Data ----------------------------------------------------------------------------------------------
async function loadOptions() {
  const opts = await api("/api/v1/train-options");
  state.defaults = opts.defaults;
  $("#builtin").replaceChildren(...opts.builtins.map((b) => el("option", { value: b, text: b })));
  $("#model-select").replaceChildren(...opts.models.map((m) => el("option", { value: m, text: m })));
  const form = $("#train-form");
  for (const input of form.querySelectorAll("input, select")) {
    const d = opts.defaults[input.name];
    if (input.name === "model") input.value = d;
    else if (d != null) input.value = d;
    input.dataset.default = d == null ? "" : String(d);
    // Left empty, epochs and batch come from the recipe for this server's device: say which.
    if (d == null && opts.recipe && opts.recipe[input.name] != null) input.placeholder = `auto: ${opts.recipe[input.name]}`;
  }
  $("#model-select").title = `auto: ${opts.recipe.model}, for ${opts.recipe.why}`;
}

async function refreshDatasetList() {
  const list = await api("/api/v1/datasets");
  $("#dataset-list").replaceChildren(el("option", { value: "", text: "—" }),
    ...list.map((d) => el("option", { value: d.id, text: `${d.name} (${d.kind}, ${d.id})` })));
}

function showDataset(d) {
  state.dataset = d;
  localStorage.setItem("pigeon-dataset", d.id);
  $("#dataset").hidden = false;
  $("#dataset-name").textContent = `${d.name} — ${d.kind}: ${d.path}`;
  const total = d.classes.reduce((a, c) => a + c.count, 0);
  $("#dataset-summary").textContent = `${d.classes.length} classes, ${total} training images; splits: ` +
    Object.entries(d.splits).map(([k, v]) => `${k} ${v}`).join(", ") + `; ${d.rejected.length} file(s) rejected`;
  const t = $("#trainable");
  t.textContent = d.trainable ? "This data will train." : "Cannot train yet: " + d.why_not;
  t.className = d.trainable ? "ok" : "bad";
  $("#go-train").disabled = !d.trainable;
  $("#start").disabled = !d.trainable;
  $("#train-data").textContent = `Data: ${d.name} (${d.classes.length} classes, ${total} training images)`;
  chart("counts-chart", { type: "bar", data: { labels: d.classes.map((c) => c.name),
    datasets: [{ label: "images per class", data: d.classes.map((c) => c.count), backgroundColor: "#1f6feb" }] } });
  $("#rejected tbody").replaceChildren(...(d.rejected.length ? d.rejected.map((r) =>
    el("tr", {}, el("td", { text: r.file }), el("td", { text: r.reason }))) :
    [el("tr", {}, el("td", { colspan: "2", text: "none" }))]));
  $("#thumbs").replaceChildren(...d.classes.map((c) => el("div", { class: "class-row" },
    el("h5", { text: `${c.name} (${c.count})` }),
    el("div", {}, ...c.thumbs.map((u, i) => el("img", { src: withToken(u), alt: `${c.name} example ${i + 1}`, loading: "lazy" }))))));
  schedulePlan();
}

async function addDataset(request, label) {
  $("#data-status").textContent = label + "…";
  const d = await guarded(() => api("/api/v1/datasets", request));
  $("#data-status").textContent = d ? `${label}: done.` : `${label}: failed.`;
  if (d) { showDataset(d); refreshDatasetList(); }
}

dropzone($("#drop"), $("#zip-input"), (files) => {
  if (!files.length) return;
  const form = new FormData();
  form.append("file", files[0], files[0].name);
  addDataset({ method: "POST", body: form }, `Uploading ${files[0].name}`);
});
$("#use-builtin").addEventListener("click", () => addDataset({ method: "POST", json: { builtin: $("#builtin").value } }, "Loading " + $("#builtin").value));
$("#use-folder").addEventListener("click", () => addDataset({ method: "POST", json: { path: $("#folder-path").value } }, "Reading " + $("#folder-path").value));
$("#dataset-list").addEventListener("change", (e) => e.target.value && guarded(async () => showDataset(await api("/api/v1/datasets/" + e.target.value))));
$("#go-train").addEventListener("click", () => openTab("train"));

// -- 2 Train ---------------------------------------------------------------------------------------------
function trainOptions() {
  const out = {};
  for (const input of $("#train-form").querySelectorAll("input, select")) {
    if (input.value === "" || input.value === input.dataset.default) continue;
    if (input.name === "time_minutes") { out.time = Number(input.value) / 60; continue; }
    out[input.name] = input.type === "number" ? Number(input.value) : input.value;
  }
  return out;
}

let planTimer = null;
function schedulePlan() {
  clearTimeout(planTimer);
  planTimer = setTimeout(async () => {
    if (!state.dataset || !state.dataset.trainable) return;
    $("#plan").textContent = "Measuring the pace on this machine…";
    try {
      const p = await api("/api/v1/plan", { method: "POST", json: { dataset: state.dataset.id, ...trainOptions() } });
      $("#plan").textContent = `Planned: about ${fmtSeconds(p.seconds)} of training (${p.epochs} epochs × ` +
        `${p.train_images} images at ${Math.round(p.images_per_second)} images/s measured now, ${p.imgsz} px, batch ${p.batch}); ` +
        "starting the job, validation and the final report add some seconds.";
    } catch (err) { $("#plan").textContent = "No plan: " + err.message; }
  }, 300);
}

$("#train-form").addEventListener("input", (e) => {
  const input = e.target;
  const changed = input.value !== "" && input.value !== input.dataset.default;
  input.classList.toggle("changed", changed);
  input.closest("label").classList.toggle("changed", changed);
  const adv = $("#advanced");
  adv.querySelector("summary").textContent = "Advanced" + (adv.querySelector(".changed") ? " (changed)" : "");
  schedulePlan();
});

$("#train-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const job = await api("/api/v1/jobs", { method: "POST", json: { dataset: state.dataset.id, ...trainOptions() } });
    await refreshJobs();
    watch(job.id);
    openTab("watch");
  });
});

// -- 3 Watch ---------------------------------------------------------------------------------------------
async function refreshJobs() {
  const jobs = await api("/api/v1/jobs");
  $("#job-list").replaceChildren(...jobs.map((j) => el("option", { value: j.id, text: `#${j.id} ${j.run} — ${j.state}` })));
  if (state.job) $("#job-list").value = state.job;
  return jobs;
}
$("#job-list").addEventListener("change", (e) => watch(Number(e.target.value)));

function showJobState(job) {
  const s = $("#job-status");
  s.textContent = `Job #${job.id} (${job.run}): ${job.state}` + (job.error ? " — " + job.error : "");
  s.className = job.state === "failed" ? "bad" : job.state === "done" ? "ok" : "";
  $("#cancel").disabled = !["queued", "running"].includes(job.state);
  $("#resume").hidden = !["interrupted", "cancelled", "failed"].includes(job.state);
  const option = $(`#job-list option[value="${job.id}"]`);
  if (option) option.textContent = `#${job.id} ${job.run} — ${job.state}`;
  if (job.state === "done") { state.run = job.run; localStorage.setItem("pigeon-run", job.run); }
}

function watch(jobId) {
  if (state.events) state.events.close();
  state.job = jobId;
  localStorage.setItem("pigeon-job", String(jobId));
  const rows = [];
  let planned = null;
  const loss = chart("loss-chart", { type: "line", data: { labels: [], datasets: [
    { label: "train loss", data: [], borderColor: "#1f6feb" }, { label: "val loss", data: [], borderColor: "#e8590c" }] } });
  const acc = chart("acc-chart", { type: "line", data: { labels: [], datasets: [
    { label: "val top-1", data: [], borderColor: "#067647" }, { label: "val macro-F1", data: [], borderColor: "#7048e8" }] },
    options: { scales: { y: { min: 0, max: 1 } } } });
  $("#log").textContent = "";
  $("#epoch-counter").textContent = "epoch –"; $("#rate").textContent = ""; $("#eta").textContent = "";
  const addRow = (r) => {
    rows.push(r);
    const evalName = "val_top1" in r ? "val" : "test";
    loss.data.labels.push(r.epoch); acc.data.labels.push(r.epoch);
    loss.data.datasets[0].data.push(r.train_loss); loss.data.datasets[1].data.push(r[evalName + "_loss"]);
    acc.data.datasets[0].data.push(r[evalName + "_top1"]); acc.data.datasets[1].data.push(r[evalName + "_macro_f1"]);
    acc.data.datasets[0].label = evalName + " top-1"; acc.data.datasets[1].label = evalName + " macro-F1";
    loss.data.datasets[1].label = evalName + " loss";
    loss.update(); acc.update();
  };
  const es = new EventSource(withToken(`/api/v1/jobs/${jobId}/events`));
  state.events = es;
  es.addEventListener("start", (e) => {
    const d = JSON.parse(e.data);
    planned = d.epochs;
    $("#epoch-counter").textContent = `epoch ${d.epoch}/${d.epochs}`;
  });
  es.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    planned = d.epochs;
    $("#rate").textContent = `${Math.round(d.images_per_s)} images/s`;
    const done = (d.epoch - 1) + d.step / d.steps;
    const perEpoch = d.steps / (d.step / (Date.now() / 1000 - (state.epochStart || Date.now() / 1000)));
    if (state.epochStart) $("#eta").textContent = "ETA " + fmtSeconds((d.epochs - done) * perEpoch);
  });
  es.addEventListener("epoch", (e) => {
    const d = JSON.parse(e.data);
    planned = d.epochs;
    state.epochStart = Date.now() / 1000;
    $("#epoch-counter").textContent = `epoch ${d.epoch}/${d.epochs}`;
    addRow(d);
  });
  es.addEventListener("done", (e) => {
    const d = JSON.parse(e.data);
    $("#epoch-counter").textContent = `epoch ${d.epochs_run}/${planned || d.epochs_run}`;
    $("#eta").textContent = `finished in ${fmtSeconds(d.seconds)}`;
  });
  es.addEventListener("log", (e) => {
    const log = $("#log");
    log.textContent = (log.textContent + JSON.parse(e.data).lines.join("\n") + "\n").split("\n").slice(-200).join("\n");
    log.scrollTop = log.scrollHeight;
  });
  es.addEventListener("state", (e) => {
    const job = JSON.parse(e.data);
    showJobState(job);
    if (job.state === "running" && !state.epochStart) state.epochStart = Date.now() / 1000;
    if (["done", "failed", "cancelled", "interrupted"].includes(job.state)) {
      es.close();
      if (job.state === "done") refreshRuns().then(() => { $("#run-list").value = job.run; showRun(job.run); });
    }
  });
}

$("#cancel").addEventListener("click", () => guarded(async () => showJobState(await api(`/api/v1/jobs/${state.job}/cancel`, { method: "POST" }))));
$("#resume").addEventListener("click", () => guarded(async () => { await api(`/api/v1/jobs/${state.job}/resume`, { method: "POST" }); watch(state.job); }));

// -- 4 Evaluate ------------------------------------------------------------------------------------------
async function refreshRuns() {
  const runs = await api("/api/v1/runs");
  const options = () => runs.map((r) => el("option", { value: r.name, text: `${r.name} (${r.status})` }));
  for (const id of ["#run-list", "#keep-run", "#cmp-a", "#cmp-b"]) {
    const keep = $(id).value;
    $(id).replaceChildren(...options());
    if (keep) $(id).value = keep;
  }
  if (runs.length > 1 && !$("#cmp-b").dataset.touched) $("#cmp-b").value = runs[1].name;
  $("#runs-table tbody").replaceChildren(...runs.map((r) => el("tr", {}, ...[r.name, r.model, r.data, r.epochs_run ?? r.epochs,
    pct(r.val_top1), pct(r.test_top1), r.status].map((v) => el("td", { text: v == null ? "–" : String(v) })))));
  const wanted = state.run || localStorage.getItem("pigeon-run");
  if (wanted && runs.some((r) => r.name === wanted)) { $("#run-list").value = wanted; $("#keep-run").value = wanted; }
  if (runs.length && !$("#evaluate").hidden && !state.shown) showRun($("#run-list").value);
  if (runs.length && !$("#keep").hidden) showFiles($("#keep-run").value);
  return runs;
}
$("#run-list").addEventListener("change", (e) => showRun(e.target.value));

function imageGrid(items) {
  return items.length ? items.map((m) => el("figure", {}, el("img", { src: withToken(m.thumb), alt: `true ${m.true}, predicted ${m.pred}` }),
    el("figcaption", { text: `${m.true} → ${m.pred} ${pct(m.confidence)}` }))) : [el("p", { text: "none" })];
}

async function showRun(name) {
  if (!name) return;
  state.shown = name;
  await guarded(async () => {
    const run = await api("/api/v1/runs/" + encodeURIComponent(name));
    const r = run.report;
    if (!r) { $("#headline").textContent = `${name}: no report yet (the run has not finished).`; return; }
    const s = run.summary;
    $("#headline").textContent = `${name}: ${run.report_split} top-1 ${pct(r.top1)}, top-5 ${pct(r.top5)}, ` +
      `macro-F1 ${pct(r.macro_f1)} on ${r.n} images` + (s.test ? `; test top-1 ${pct(s.test.top1)}` : "");
    const pc = r.per_class;
    chart("prf-chart", { type: "bar", data: { labels: pc.map((c) => c.class), datasets: [
      { label: "precision", data: pc.map((c) => c.precision), backgroundColor: "#1f6feb" },
      { label: "recall", data: pc.map((c) => c.recall), backgroundColor: "#e8590c" },
      { label: "F1", data: pc.map((c) => c.f1), backgroundColor: "#067647" }] }, options: { scales: { y: { min: 0, max: 1 } } } });
    const classes = pc.map((c) => c.class);
    const head = el("tr", {}, el("th", { text: "true \\ pred" }), ...classes.map((c) => el("th", { text: c })));
    const body = r.confusion.map((row, i) => el("tr", {}, el("th", { text: classes[i] }), ...row.map((n, j) =>
      el("td", { class: i === j ? "diag" : "" }, el("button", { "aria-label": `true ${classes[i]}, predicted ${classes[j]}: ${n}`,
        "data-cell": `${i},${j}`, text: String(n), onclick: () => showCell(name, i, j, classes) })))));
    $("#confusion").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
    $("#cell-images").replaceChildren();
    const wrong = await api(`/api/v1/runs/${encodeURIComponent(name)}/misclassified?limit=48`);
    $("#mistakes").replaceChildren(...imageGrid(wrong));
  });
}

async function showCell(name, i, j, classes) {
  await guarded(async () => {
    const items = await api(`/api/v1/runs/${encodeURIComponent(name)}/cell?true=${i}&pred=${j}&limit=48`);
    $("#cell-images").replaceChildren(el("h5", { text: `true ${classes[i]}, predicted ${classes[j]}: ${items.length} image(s) shown` }),
      el("div", { class: "images" }, ...imageGrid(items)));
  });
}

// -- 5 Test ----------------------------------------------------------------------------------------------
async function refreshModels() {
  const models = await api("/api/v1/models");
  const keep = $("#test-model").value;
  $("#test-model").replaceChildren(...models.map((m) => el("option", { value: m.id, text: `${m.name} (${m.format}, ${m.id})` + (m.default ? " — default" : "") })));
  const fromRun = state.run && models.find((m) => m.name === state.run + "/best");
  if (fromRun) $("#test-model").value = fromRun.id; else if (keep) $("#test-model").value = keep;
}

async function predictFiles(files) {
  if (!files.length) return;
  if (!$("#test-model").value) await refreshModels();
  const model = $("#test-model").value;
  if (!model) { showError(new Error("no model to test yet: train one, or start pigeon serve with --model")); return; }
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name || "pasted.png");
  const k = Number($("#top-k").value) || 5;
  const minConf = $("#min-conf").value;
  const url = `/api/v1/models/${model}/predict?top_k=${k}` + (minConf !== "" ? `&min_conf=${Number(minConf)}` : "");
  const auth = TOKEN ? ` -H "Authorization: Bearer $PIGEON_TOKEN"` : "";
  $("#curl").textContent = `curl${auth} ${files.map((f) => `-F "file=@${f.name || "image.png"}"`).join(" ")} "${location.origin}${url}"`;
  await guarded(async () => {
    const res = await api(url, { method: "POST", body: form });
    $("#raw-json").textContent = JSON.stringify(res, null, 2);
    $("#predictions").replaceChildren(...res.predictions.map((p, i) => el("div", { class: "pred" },
      el("img", { src: URL.createObjectURL(files[i]), alt: p.file }),
      el("div", {}, el("strong", { class: "top-label", text: p.labels ? (p.labels.length ? p.labels.map((t) => `${t.label} ${pct(t.score)}`).join(", ") : "no class above its threshold") : p.abstained ? `unknown: best guess ${p.top[0].label} ${pct(p.top[0].score)} is below ${pct(res.min_conf)}` : `${p.top[0].label} ${pct(p.top[0].score)}` }),
        ...p.top.map((t) => el("div", { class: "bar" }, el("span", { class: "label", text: t.label }),
          el("span", { class: "fill", style: `width:${Math.max(1, Math.round(250 * t.score))}px` }), el("span", { text: pct(t.score) }))),
        el("small", { text: `decode ${p.ms.decode.toFixed(1)} ms · inference ${p.ms.inference.toFixed(1)} ms · total ${p.ms.total.toFixed(1)} ms` })))));
  });
}
dropzone($("#test-drop"), $("#test-input"), predictFiles);
document.addEventListener("paste", (e) => {
  if ($("#test").hidden) return;
  const files = [...e.clipboardData.items].filter((i) => i.type.startsWith("image/")).map((i) => i.getAsFile());
  if (files.length) predictFiles(files);
});
$("#copy-curl").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("#curl").textContent));
$("#webcam").addEventListener("click", async () => {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) { showError(new Error("this browser gives no webcam here (it needs localhost or https)")); return; }
  await guarded(async () => {
    const video = $("#video");
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.hidden = false; $("#snap").hidden = false;
  });
});
$("#snap").addEventListener("click", () => {
  const video = $("#video");
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => predictFiles([new File([blob], "webcam.png", { type: "image/png" })]), "image/png");
});

// -- 6 Keep ----------------------------------------------------------------------------------------------
async function showFiles(name) {
  if (!name) return;
  await guarded(async () => {
    const run = await api("/api/v1/runs/" + encodeURIComponent(name));
    $("#files").replaceChildren(...run.files.map((f) => el("li", {}, el("a", { href: withToken(f.url), download: "", text: f.file }),
      el("span", { text: ` (${(f.bytes / 1e6).toFixed(2)} MB)` }))));
  });
}
$("#keep-run").addEventListener("change", (e) => showFiles(e.target.value));
for (const button of document.querySelectorAll("[data-export]")) {
  button.addEventListener("click", () => guarded(async () => {
    const name = $("#keep-run").value;
    const label = button.textContent;
    $("#export-status").textContent = `Exporting ${name} as ${label}…`;
    try {
      const res = await api(`/api/v1/runs/${encodeURIComponent(name)}/exports`, { method: "POST",
        json: { format: button.dataset.export, int8: Boolean(button.dataset.int8) } });
      const parity = res.parity ? Object.entries(res.parity).map(([k, v]) => `${k} ${typeof v === "number" ? +v.toPrecision(4) : v}`).join(", ") : "–";
      $("#exports tbody").append(el("tr", {}, el("td", { text: `${label} (${res.file})` }), el("td", { text: parity }),
        el("td", {}, el("a", { href: withToken(res.url), download: "", text: "download" }))));
      $("#export-status").textContent = `${label}: done.`;
      showFiles(name);
    } catch (err) { $("#export-status").textContent = `${label}: failed.`; throw err; }
  }));
}
$("#cmp-b").addEventListener("change", (e) => { e.target.dataset.touched = "1"; });
$("#compare").addEventListener("click", () => guarded(async () => {
  const a = $("#cmp-a").value, b = $("#cmp-b").value;
  const runs = await api(`/api/v1/compare?names=${encodeURIComponent(a)},${encodeURIComponent(b)}`);
  const keys = ["model", "data", "epochs", "imgsz", "batch", "lr", "fliplr"];
  const rows = keys.map((k) => el("tr", {}, el("th", { text: k }), ...runs.map((r) => el("td", { text: String(r.config[k] ?? "–") }))));
  const metric = (r, split) => (r.summary[split] ? pct(r.summary[split].top1) : "–");
  rows.push(el("tr", {}, el("th", { text: "val top-1" }), ...runs.map((r) => el("td", { text: metric(r, "val") }))));
  rows.push(el("tr", {}, el("th", { text: "test top-1" }), ...runs.map((r) => el("td", { text: metric(r, "test") }))));
  $("#compare-table").replaceChildren(el("thead", {}, el("tr", {}, el("th", { text: "" }), ...runs.map((r) => el("th", { text: r.name })))), el("tbody", {}, ...rows));
  const colors = ["#1f6feb", "#e8590c"];
  const longest = Math.max(...runs.map((r) => r.rows.length));
  chart("compare-chart", { type: "line", data: { labels: Array.from({ length: longest }, (_, i) => i + 1),
    datasets: runs.map((r, i) => ({ label: r.name, borderColor: colors[i % 2], data: r.rows.map((x) => x.val_top1 ?? x.test_top1) })) },
    options: { scales: { y: { min: 0, max: 1 } } } });
}));

// -- start -----------------------------------------------------------------------------------------------
(async () => {
  await guarded(async () => {
    await loadOptions();
    await refreshDatasetList();
    const last = localStorage.getItem("pigeon-dataset");
    if (last) { try { showDataset(await api("/api/v1/datasets/" + last)); } catch (e) { localStorage.removeItem("pigeon-dataset"); } }
    const jobs = await refreshJobs();
    // A reloaded page picks up where it was: the running job, else the one it watched last.
    const running = jobs.find((j) => j.state === "running" || j.state === "queued");
    const lastJob = Number(localStorage.getItem("pigeon-job"));
    const job = running || jobs.find((j) => j.id === lastJob);
    if (job) { state.job = job.id; $("#job-list").value = job.id; watch(job.id); }
  });
})();
