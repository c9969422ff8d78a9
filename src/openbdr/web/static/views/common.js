// Pieces several views show: protection state, RPO age, last results, job rows.
import { act, ago, badge, bytes, cell, confirmAction, duration, h, html, progress, table, when } from "../js/dom.js";
import { post } from "../js/api.js";

// Restore-point age against the RPO target (age null: no point yet).
export function ageVsRpo(age, rpo) {
  if (age === null || age === undefined) return html`<span class="muted">no restore point</span>`;
  const frac = rpo ? Math.min(1, age / rpo) : 0;
  const bar = rpo ? html`<div class="progress" aria-hidden="true"><div class="bar${age > rpo ? " over" : ""}" \
data-width="${(frac * 100).toFixed(0)}"></div></div><span class="muted">/ ${duration(rpo)}</span>` : "";
  return html`<div class="age" title="${rpo ? `age ${duration(age)} of RPO target ${duration(rpo)}` : ""}">\
<span>${duration(age)}</span>${bar}</div>`;
}

// The dashboard's last sync and last drill: {state, at} and a drill's verdict.
export function jobResult(j) {
  if (!j) return html`<span class="muted">never</span>`;
  return html`<span>${badge(j.state)} <span class="muted">${ago(j.at)}</span></span>`;
}

export function drillVerdict(j) {
  if (!j) return html`<span class="muted">never</span>`;
  const verdict = j.verdict || (j.state === "succeeded" ? "passed" : j.state);
  return html`<span>${badge(verdict)} <span class="muted">${ago(j.at)}</span></span>`;
}

export const hostLink = (name) => html`<a href="#/hosts/${encodeURIComponent(name)}">${name}</a>`;

// What a finished job did, in a few words: a sync's point, retention's forgotten and
// kept points, gc's reclaimed chunks and bytes, a copy's points and destination,
// a verification's verdict.
export function jobSummary(j) {
  const r = j.result || {};
  if (j.state !== "succeeded") return "";
  if (j.kind === "retention" && r.forgotten) {
    const verb = r.dry_run ? "would forget" : "forgot";
    return `${verb} ${r.forgotten.length} point${r.forgotten.length === 1 ? "" : "s"}, kept ${(r.kept || []).length}`;
  }
  if (j.kind === "gc" && r.deleted !== undefined) {
    const verb = r.dry_run ? "would reclaim" : "reclaimed";
    return `${verb} ${bytes(r.deleted_bytes || 0)} (${r.deleted} chunk${r.deleted === 1 ? "" : "s"})` +
      (r.young ? `; ${r.young} kept by the margin` : "") +
      (r.locked ? `; ${r.locked} kept under a lock` : "") +
      (r.relocked ? `; ${r.relocked} found unlocked and locked` : "");
  }
  if (j.kind === "copy" && r.copied) {
    return `copied ${r.copied.length} point${r.copied.length === 1 ? "" : "s"} to ${r.to}` +
      (r.newest ? `; newest there: ${r.newest.id}` : "");
  }
  if (j.kind === "sync" && r.point) return `point ${r.point.id}`;
  if (j.kind === "verify" && r.ok !== undefined) return r.ok ? `${r.points} point(s) intact` : `${(r.problems || []).length} problem(s)`;
  return "";
}

// Jobs with live progress and (for operators) pause, resume and cancel.
export function jobsTable(jobs, session, opts = {}) {
  const operate = session.can("operator");
  const cols = [{ label: "Job" }, { label: "Kind" }, ...(opts.host ? [] : [{ label: "Host" }]),
    { label: "State" }, { label: "Progress" }, { label: "Result" }, { label: "Started" },
    ...(operate ? [{ label: "Actions" }] : [])];
  const rows = jobs.map((j) => h("tr", { dataset: { jobRow: j.id, kind: j.kind } },
    cell("Job", `#${j.id}`), cell("Kind", j.host || !j.target ? j.kind : `${j.kind} · ${j.target}`),
    opts.host ? null : cell("Host", j.host ? hostLink(j.host) : "—"),
    cell("State", h("span", {}, badge(j.state), j.error ? h("div", { class: "error" }, j.error) : null)),
    cell("Progress", progress(j)), cell("Result", h("span", { class: "job-result" }, jobSummary(j))),
    cell("Started", when(j.started || j.created)),
    operate ? cell("Actions", jobActions(j)) : null));
  return table(cols, rows, { empty: "No jobs.", caption: "Jobs", attrs: { id: opts.id || null } });
}

export function jobActions(j) {
  const box = h("div", { class: "actions" });
  const button = (label, action, confirmText) => {
    const b = h("button", {
      type: "button", class: action === "cancel" ? "danger" : "secondary",
      "aria-label": `${label} ${j.kind} job ${j.id}`,
      onclick: async () => {
        if (confirmText && !(await confirmAction(confirmText, label))) return;
        await act(b, () => post(`jobs/${j.id}/${action}`), `${label}: job ${j.id}`);
      },
    }, label);
    box.append(b);
  };
  if (["queued", "running"].includes(j.state)) button("Pause", "pause");
  if (j.state === "paused") button("Resume", "resume");
  if (["queued", "running", "paused", "pausing"].includes(j.state)) {
    button("Cancel", "cancel", `Cancel ${j.kind} job ${j.id}${j.host ? ` of ${j.host}` : ""}? Its work so far is kept as a checkpoint.`);
  }
  return box;
}

export function bytesPair(read, stored) {
  return html`<span>${bytes(read)}<span class="muted"> read · </span>${bytes(stored)}\
<span class="muted"> stored</span></span>`;
}
