// Small DOM and formatting helpers shared by the views.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElementNS(
    tag.startsWith("svg:") ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
    tag.replace(/^svg:/, ""));
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the strict CSP
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    if (c instanceof Html) {
      el.insertAdjacentHTML("beforeend", c.text);
      if (c.text.includes("data-width")) applyWidths(el);
    } else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Markup built as one string, for views with thousands of rows: the browser parses it
// in one go, much faster than creating each element from script. `html` escapes every
// interpolated value unless it is Html already (or an array of those).
export class Html {
  constructor(text) { this.text = text; }
  toString() { return this.text; }
}

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ESC[c]);

function piece(v) {
  if (v === undefined || v === null || v === false) return "";
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(piece).join("");
  return esc(v);
}

export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + strings[i + 1];
  return new Html(out);
}

export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i && v < 10 ? 1 : 0)} ${UNITS[i]}`;
}
export const rate = (n) => (n === null || n === undefined ? "—" : `${bytes(n)}/s`);

export function duration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (Number(s) < 0.9995) return `${Math.max(0, Math.round(Number(s) * 1000))} ms`; // freezes, quick syncs
  s = Math.max(0, Math.round(Number(s)));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return h("time", { datetime: d.toISOString(), title: d.toISOString() }, d.toLocaleString());
}

export function ago(iso) {
  if (!iso) return "never";
  return `${duration((Date.now() - new Date(iso).getTime()) / 1000)} ago`;
}

export const badge = (text, cls = text) =>
  html`<span class="badge b-${String(cls).toLowerCase()}">${text}</span>`;

// A job's progress bar: percent, bytes, rate and ETA; updated in place by live events.
function percentOf(job) {
  const pct = job.state === "succeeded" ? 100 : Number((job.progress || {}).percent ?? 0);
  return Math.max(0, Math.min(100, pct));
}

function progressBar(job) {
  const p = job.progress || {};
  const pct = percentOf(job);
  const parts = [`${pct.toFixed(pct >= 100 || pct === 0 ? 0 : 1)}%`];
  if (p.total_bytes) parts.push(`${bytes(p.done_bytes || 0)} of ${bytes(p.total_bytes)}`);
  if (p.rate && !["succeeded", "failed", "cancelled"].includes(job.state)) parts.push(rate(p.rate));
  if (p.eta !== undefined && p.eta !== null && job.state === "running") parts.push(`ETA ${duration(p.eta)}`);
  const label = `${job.kind} job ${job.id} ${job.state}: ${parts.join(", ")}`;
  // the width is set through CSSOM after parsing: the CSP forbids inline style attributes
  return html`<div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" \
aria-valuenow="${Math.round(pct)}" aria-label="${label}"><div class="bar" data-width="${pct}"></div>\
<span class="txt">${parts.join(" · ")}</span></div>`;
}

export function progressHtml(job) {
  return html`<div class="job-progress" data-job="${job.id}" data-state="${job.state}" \
data-percent="${percentOf(job)}">${progressBar(job)}</div>`;
}

export function progress(job) {
  return h("div", {}, progressHtml(job)).firstElementChild;
}

export function setProgress(el, job) {
  el.innerHTML = progressBar(job).text;
  el.dataset.state = job.state;
  el.dataset.percent = String(percentOf(job));
  applyWidths(el);
}

// Bars in parsed markup carry their width as data-width (percent); CSSOM sets it.
export function applyWidths(root) {
  for (const bar of root.querySelectorAll("[data-width]")) bar.style.width = `${bar.dataset.width}%`;
}

export function announce(msg) {
  const el = document.getElementById("announce");
  el.textContent = "";
  setTimeout(() => { el.textContent = msg; }, 50);
}

export function toast(msg, isError = false) {
  const box = document.getElementById("toasts");
  const t = h("div", { class: `toast${isError ? " err" : ""}` }, msg);
  box.append(t);
  setTimeout(() => t.remove(), isError ? 9000 : 4000);
}

export function showError(err) {
  const msg = err && err.message ? err.message : String(err);
  toast(err && err.hint ? `${msg} — ${err.hint}` : msg, true);
}

// A confirmation for destructive actions; resolves true only on an explicit confirm.
export function confirmAction(text, okLabel = "Confirm") {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  const back = document.activeElement;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "ok");
      if (back && back.focus) back.focus();
    }, { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    dlg.querySelector("button[value=cancel]").focus();
  });
}

// Runs an action from a button: disables it meanwhile, reports errors.
export async function act(button, fn, doneMsg) {
  if (button) button.disabled = true;
  try {
    const out = await fn();
    if (doneMsg) { toast(doneMsg); announce(doneMsg); }
    return out;
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function table(cols, rows, opts = {}) {
  return h("table", { class: "responsive", ...(opts.attrs || {}) },
    opts.caption ? h("caption", { class: "sr-only" }, opts.caption) : null,
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, opts.empty || "Nothing yet."))));
}

export function cell(label, content, num = false) {
  return h("td", { "data-label": label, class: num ? "num" : null }, content);
}
