// Pieces several views show: protection state, RPO age, last results, job rows.
import { act, ago, badge, bytes, cell, confirmAction, duration, h, progress, table, when } from "../js/dom.js";
import { post } from "../js/api.js";

export function ageVsRpo(status) {
  const lp = status.last_point;
  if (!lp) return h("span", { class: "muted" }, "no restore point");
  const rpo = status.rpo_seconds;
  const age = lp.age_seconds;
  const frac = rpo ? Math.min(1, age / rpo) : 0;
  return h("div", { class: "age", title: rpo ? `age ${duration(age)} of RPO target ${duration(rpo)}` : "" },
    h("span", {}, duration(age)),
    rpo ? h("div", { class: "progress", "aria-hidden": "true" },
      h("div", { class: `bar${age > rpo ? " over" : ""}`, style: `width:${(frac * 100).toFixed(0)}%` })) : null,
    rpo ? h("span", { class: "muted" }, `/ ${duration(rpo)}`) : null);
}

export function jobResult(j) {
  if (!j) return h("span", { class: "muted" }, "never");
  return h("span", {}, badge(j.state), " ", h("span", { class: "muted" }, ago(j.finished || j.created)));
}

export function drillVerdict(j) {
  if (!j) return h("span", { class: "muted" }, "never");
  const verdict = (j.result && j.result.verdict) || (j.state === "succeeded" ? "passed" : j.state);
  return h("span", {}, badge(verdict), " ", h("span", { class: "muted" }, ago(j.finished || j.created)));
}

export const hostLink = (name) => h("a", { href: `#/hosts/${encodeURIComponent(name)}` }, name);

// Jobs with live progress and (for operators) pause, resume and cancel.
export function jobsTable(jobs, session, opts = {}) {
  const operate = session.can("operator");
  const cols = [{ label: "Job" }, { label: "Kind" }, ...(opts.host ? [] : [{ label: "Host" }]),
    { label: "State" }, { label: "Progress" }, { label: "Started" }, ...(operate ? [{ label: "Actions" }] : [])];
  const rows = jobs.map((j) => h("tr", { dataset: { jobRow: j.id } },
    cell("Job", `#${j.id}`), cell("Kind", j.kind),
    opts.host ? null : cell("Host", j.host ? hostLink(j.host) : "—"),
    cell("State", h("span", {}, badge(j.state), j.error ? h("div", { class: "error" }, j.error) : null)),
    cell("Progress", progress(j)), cell("Started", when(j.started || j.created)),
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
  return h("span", {}, bytes(read), h("span", { class: "muted" }, " read · "), bytes(stored),
    h("span", { class: "muted" }, " stored"));
}
