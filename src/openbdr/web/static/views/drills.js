// Drills: plans and schedules (per policy), running drills, history, and report pages.
import { blobUrl, download, get, patch } from "../js/api.js";
import { act, badge, cell, duration, fill, h, table, when } from "../js/dom.js";
import { jobsTable } from "./common.js";
import { drillTable } from "./host.js";

export const drillsView = {
  async enter(st) {
    st.title = "Drills";
    st.parts = { plans: h("div"), running: h("div"), history: h("div") };
    fill(st.root, h("h1", {}, "Drills"),
      st.session.kinds.jobs.drill ? null : h("p", { class: "muted" }, "The drill job kind is not installed in this server: drills run with `openbdr drill run`, and their reports show here."),
      h("section", { class: "card", "aria-labelledby": "plans-title" }, h("h2", { id: "plans-title" }, "Plans and schedules"), st.parts.plans),
      h("section", { class: "card", "aria-labelledby": "running-title" }, h("h2", { id: "running-title" }, "Drill jobs"), st.parts.running),
      h("section", { class: "card", "aria-labelledby": "history-title" }, h("h2", { id: "history-title" }, "History"), st.parts.history));
    await this.refresh(st);
  },

  async refresh(st) {
    const [policies, hosts, jobs, reports] = await Promise.all([
      get("policies"), get("hosts"), get("jobs?kind=drill&limit=50"), get("/api/v1/console/drills?limit=200")]);
    drawPlans(st, policies, hosts);
    fill(st.parts.running, jobsTable(jobs, st.session, { id: "drill-jobs" }));
    fill(st.parts.history, drillTable(reports, "No drill has run yet.", true));
  },
};

function drawPlans(st, policies, hosts) {
  const operate = st.session.can("operator");
  const trs = policies.map((p) => {
    const users = hosts.filter((x) => x.policy === p.name).map((x) => x.name);
    const plan = p.drill_plan && Object.keys(p.drill_plan).length ? JSON.stringify(p.drill_plan) : "default plan (boot, console marker)";
    let edit = null;
    if (operate) {
      const id = `drill-every-${p.id}`;
      const input = h("input", { type: "number", id, min: 1, value: p.drill_seconds ? p.drill_seconds / 3600 : "", style: "width:6em" });
      const b = h("button", { type: "button", class: "secondary", onclick: () => act(b, () => patch(`policies/${encodeURIComponent(p.name)}`, {
        drill_seconds: input.value ? Math.max(3600, Math.round(Number(input.value) * 3600)) : null,
      }), `Drill schedule of ${p.name} saved`) }, "Save");
      edit = h("div", { class: "row" }, h("label", { for: id }, "every (hours)"), input, b);
    }
    return h("tr", {}, cell("Policy", p.name), cell("Hosts", users.join(", ") || "—"),
      cell("Schedule", p.drill_seconds ? `every ${duration(p.drill_seconds)}` : "not scheduled"),
      cell("Plan", h("code", {}, plan)), operate ? cell("Change", edit) : null);
  });
  fill(st.parts.plans, table([{ label: "Policy" }, { label: "Hosts" }, { label: "Schedule" }, { label: "Plan" },
    ...(operate ? [{ label: "Change" }] : [])], trs, { empty: "No policies yet.", caption: "Drill plans" }));
}

export const reportView = {
  async enter(st) {
    const [host, id] = st.params;
    st.title = `Drill ${id}`;
    const base = `/api/v1/console/drills/${encodeURIComponent(host)}/${encodeURIComponent(id)}`;
    const r = await get(base);
    const steps = [...(r.checks || []).map((c) => ({ ...c, phase: "check" })), ...(r.probes || []).map((p) => ({ ...p, phase: "probe" }))];
    const trs = steps.map((s) => h("tr", {}, cell("Name", s.name), cell("Type", `${s.phase}: ${s.type}`),
      cell("Result", badge(s.ok ? "passed" : "failed")), cell("Took", duration(s.duration), true),
      cell("Passed at", s.passed_at !== undefined && s.passed_at !== null ? `${Number(s.passed_at).toFixed(1)} s` : "—", true),
      cell("Detail", s.detail)));
    const shot = h("div", { id: "screenshot-box" });
    const dl = h("button", { type: "button", id: "download-report", onclick: () =>
      act(dl, () => download(`${base}/report.html?download=true`, `drill-${host}-${id}.html`), "Report downloaded") }, "Download report (HTML)");
    const dlj = h("button", { type: "button", class: "secondary", onclick: () =>
      act(dlj, () => download(`${base}/report.json?download=true`, `drill-${host}-${id}.json`), "Report downloaded") }, "Download JSON");
    const kv = (k, v, id2) => [h("dt", {}, k), h("dd", { id: id2 || null }, v)];
    fill(st.root,
      h("p", {}, h("a", { href: "#/drills" }, "← Drills")),
      h("h1", {}, `Drill ${r.id} of ${r.host} `, h("span", { id: "verdict" }, badge(r.verdict))),
      h("p", {}, r.reason),
      h("div", { class: "row" }, dl, dlj),
      h("div", { class: "grid2" },
        h("section", { class: "card", "aria-labelledby": "summary-title" }, h("h2", { id: "summary-title" }, "Summary"),
          h("dl", { class: "kv" },
            kv("Restore point", h("code", {}, r.point)), kv("Plan", `${r.plan} (${r.kind} drill)`),
            kv("Started", when(r.started)), kv("Duration", duration(r.duration_s)),
            kv("Accelerator", `${(r.accel || {}).name || "—"} ${(r.accel || {}).reason ? `(${r.accel.reason})` : ""}`),
            kv("RTO, first probe", r.rto_first_s !== null ? `${r.rto_first_s.toFixed(1)} s` : "—", "rto-first"),
            kv("RTO, all probes", r.rto_all_s !== null ? `${r.rto_all_s.toFixed(1)} s` : "—", "rto-all")),
          h("h3", {}, "Timings"),
          table([{ label: "Phase" }, { label: "Seconds", num: true }],
            Object.entries(r.timings || {}).map(([k, v]) => h("tr", {}, cell("Phase", k), cell("Seconds", Number(v).toFixed(1), true))),
            { empty: "—", caption: "Timings" })),
        h("section", { class: "card", "aria-labelledby": "shot-title" }, h("h2", { id: "shot-title" }, "Console screenshot"), shot)),
      h("section", { class: "card", "aria-labelledby": "probes-title" }, h("h2", { id: "probes-title" }, "Checks and probes"),
        table([{ label: "Name" }, { label: "Type" }, { label: "Result" }, { label: "Took", num: true }, { label: "Passed at", num: true }, { label: "Detail" }],
          trs, { empty: "No checks or probes ran.", caption: "Checks and probes", attrs: { id: "probes-table" } })),
      r.console_tail ? h("section", { class: "card" }, h("h2", {}, "Serial console (tail)"), h("pre", {}, r.console_tail)) : null,
      r.service_log_tail ? h("section", { class: "card" }, h("h2", {}, "Service log (tail)"), h("pre", {}, r.service_log_tail)) : null,
      h("p", { class: "muted" }, `Teardown: ${(r.teardown || []).join("; ") || "complete"}`));
    if (r.screenshot) {
      try {
        const url = await blobUrl(`${base}/screenshot.png`);
        fill(shot, h("img", { class: "shot", id: "screenshot", src: url, alt: `VGA console of ${r.host} during drill ${r.id}` }));
      } catch (err) {
        fill(shot, h("p", { class: "error" }, err.message));
      }
    } else {
      fill(shot, h("p", { class: "muted" }, "No screenshot (the plan did not ask for one, or the drill did not boot)."));
    }
  },
};
