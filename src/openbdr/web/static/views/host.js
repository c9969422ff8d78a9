// One host: disks and layout, sync settings (compression), restore points, jobs, drills.
import { del, get, patch, post } from "../js/api.js";
import {
  act, ago, announce, badge, bytes, cell, confirmAction, duration, fill, h, table, when,
} from "../js/dom.js";
import { ageVsRpo, bytesPair, jobsTable } from "./common.js";

const RUNNING = ["running", "pausing", "cancelling"];

export const hostView = {
  async enter(st) {
    st.name = st.params[0];
    st.title = st.name;
    st.parts = {
      head: h("div"), disks: h("div"), settings: h("div"), timeline: h("div"),
      points: h("div"), jobs: h("div"), drills: h("div"),
    };
    const sec = (id, title, body) => h("section", { class: "card", "aria-labelledby": id },
      h("h2", { id }, title), body);
    fill(st.root, st.parts.head,
      h("div", { class: "grid2" }, sec("settings-title", "Sync settings", st.parts.settings),
        sec("disks-title", "Disks", st.parts.disks)),
      sec("points-title", "Restore points", h("div", {}, st.parts.timeline, st.parts.points)),
      sec("jobs-title", "Jobs", st.parts.jobs),
      sec("drills-title", "Drills", st.parts.drills));
    await this.refresh(st);
  },

  async refresh(st) {
    const name = encodeURIComponent(st.name);
    const [host, points, own, gcs] = await Promise.all([
      get(`hosts/${name}`), get(`points?host=${name}&limit=500`), get(`jobs?host=${name}&limit=50`),
      get("jobs?kind=gc&limit=20")]);
    // gc runs per target: the host's page shows those of its target among its own jobs
    const jobs = own.concat(gcs.filter((j) => !j.host && j.target === host.target))
      .sort((a, b) => b.id - a.id).slice(0, 50);
    const policy = host.policy ? await get(`policies/${encodeURIComponent(host.policy)}`) : null;
    st.host = host; st.points = points; st.jobs = jobs; st.policy = policy;
    drawHead(st);
    drawDisks(st);
    drawSettings(st);
    drawPoints(st);
    fill(st.parts.jobs, jobsTable(jobs, st.session, { host: true, id: "jobs-table" }));
    drawDrills(st);
  },

  onJobs(st, jobs) {
    // a sync started or stopped running: the compression checkbox's lock follows it
    const mine = jobs.filter((j) => j.host === st.name && j.kind === "sync");
    const running = mine.some((j) => RUNNING.includes(j.state));
    if (st.syncRunning !== undefined && running !== st.syncRunning) drawSettings(st, running);
  },
};

function activeSync(st) {
  return st.jobs.find((j) => j.kind === "sync" && ["queued", ...RUNNING, "paused"].includes(j.state));
}

function drawHead(st) {
  const { host, session } = st;
  const s = host.status;
  const operate = session.can("operator");
  const actions = h("div", { class: "actions", id: "host-actions" });
  if (operate) {
    const sync = h("button", { type: "button", id: "sync-now", onclick: () =>
      act(sync, () => post(`hosts/${encodeURIComponent(host.name)}/sync`, { full: false }), `Sync of ${host.name} queued`) }, "Sync now");
    const full = h("button", { type: "button", class: "secondary", onclick: async () => {
      if (!(await confirmAction(`Read every valid block of ${host.name} again (a full sync)?`, "Full sync"))) return;
      await act(full, () => post(`hosts/${encodeURIComponent(host.name)}/sync`, { full: true }), `Full sync of ${host.name} queued`);
    } }, "Full sync");
    actions.append(sync, full);
    if (session.kinds.jobs.drill) {
      const drill = h("button", { type: "button", class: "secondary", id: "run-drill", onclick: () =>
        act(drill, () => runDrill(st, "latest"), `Drill of ${host.name} queued`) }, "Run drill");
      actions.append(drill);
    }
    const remove = h("button", { type: "button", class: "danger", id: "delete-host", onclick: async () => {
      if (!(await confirmAction(`Forget host ${host.name} in the catalog? Its restore points stay in the repository.`, "Delete host"))) return;
      await act(remove, () => del(`hosts/${encodeURIComponent(host.name)}`), `Host ${host.name} deleted`);
      location.hash = "#/";
    } }, "Delete host");
    actions.append(remove);
  }
  const src = Object.entries(host.source).filter(([k]) => k !== "type")
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`).join("; ");
  fill(st.parts.head,
    h("div", { class: "row" }, h("h1", { style: "margin-right:auto" }, host.name, " ", badge(s.protection)), actions),
    h("div", { class: "cards" },
      h("div", { class: "stat" }, h("span", { class: "l" }, "Restore-point age / RPO target"),
        ageVsRpo(s.last_point ? s.last_point.age_seconds : null, s.rpo_seconds)),
      h("div", { class: "stat" }, h("span", { class: "l" }, "Source"), h("div", {}, `${host.source.type} — ${src}`)),
      h("div", { class: "stat" }, h("span", { class: "l" }, "Target / policy"), h("div", {}, `${host.target} / ${host.policy || "none"}`)),
      h("div", { class: "stat" }, h("span", { class: "l" }, "Traffic"), bytesPair(s.read_bytes, s.stored_bytes)),
      h("div", { class: "stat" }, h("span", { class: "l" }, "Runs on"), h("div", {}, host.pool ? `agents of pool ${host.pool}` : "the server")),
      h("div", { class: "stat", id: "host-copies" }, h("span", { class: "l" }, "Copies at a second site (newest copy's age)"),
        copiesView(s.copies || []))));
}

// where the host's copies are and how old the newest one is (a second RPO)
function copiesView(copies) {
  if (!copies.length) return h("div", { class: "muted" }, "no copy");
  return h("ul", { class: "plain" }, copies.map((c) =>
    h("li", {}, `${c.target}: ${c.point ? `point ${c.point}, ${duration(c.age_seconds)} old` : "nothing copied yet"}`)));
}

function drawDisks(st) {
  const disks = st.host.disks || [];
  if (!disks.length) { fill(st.parts.disks, h("p", { class: "muted" }, "Disks are listed after the first sync.")); return; }
  fill(st.parts.disks, disks.map((d) => {
    const L = d.layout || {};
    const parts = (L.partitions || []).map((p) => {
      const fs = p.filesystem || {};
      return h("tr", {}, cell("Partition", p.index), cell("Type", p.type || p.name || "—"),
        cell("File system", fs.kind ? `${fs.kind}${fs.label ? ` "${fs.label}"` : ""}` : "—"),
        cell("Size", bytes(p.length), true),
        cell("Used", fs.used_bytes !== undefined && fs.used_bytes !== null ? bytes(fs.used_bytes) : "—", true));
    });
    if (L.filesystem) {
      const fs = L.filesystem;
      parts.push(h("tr", {}, cell("Partition", "whole disk"), cell("Type", "—"), cell("File system", fs.kind || "—"),
        cell("Size", bytes(fs.total_bytes), true), cell("Used", bytes(fs.used_bytes), true)));
    }
    return h("div", { class: "disk" },
      h("p", {}, h("strong", {}, d.name), ` — ${bytes(d.size)}, ${L.table ? `${L.table.toUpperCase()} table` : "layout unknown"}`,
        L.valid_bytes !== undefined ? `, ${bytes(L.valid_bytes)} valid data` : ""),
      table([{ label: "Partition" }, { label: "Type" }, { label: "File system" }, { label: "Size", num: true }, { label: "Used", num: true }],
        parts, { empty: "No partitions.", caption: `Layout of ${d.name}` }));
  }));
}

const KEEP = ["last", "hourly", "daily", "weekly", "monthly"];

// When retention and gc run (defaults as in control/maintenance.py).
function retentionNote(ret) {
  const keeps = KEEP.some((k) => Number(ret[`keep_${k}`] ?? ret[k] ?? 0) > 0);
  if (!keeps) return "Empty: every restore point is kept.";
  const margin = ret.gc_margin_seconds ?? 3600;
  return `Retention runs every ${duration(ret.every_seconds || 86400)}; gc reclaims the forgotten points' \
space after it and every ${duration(ret.gc_every_seconds || 7 * 86400)} (margin ${margin ? duration(margin) : "none"}).`;
}

function drawSettings(st, runningOverride) {
  const { policy, session, host } = st;
  const operate = session.can("operator");
  const sync = activeSync(st);
  const running = runningOverride ?? (!!sync && RUNNING.includes(sync.state));
  st.syncRunning = running;
  if (!policy) {
    const b = operate ? h("button", { type: "button", id: "create-policy", onclick: () => act(b, async () => {
      await post("policies", { name: host.name, rpo_seconds: 3600, compression: "none" });
      await patch(`hosts/${encodeURIComponent(host.name)}`, { policy: host.name });
    }, "Policy created") }, "Create a policy for this host") : null;
    fill(st.parts.settings, h("p", { class: "muted" }, "No policy: this host is synced only on demand, uncompressed."), b);
    return;
  }
  const old = st.parts.settings.querySelector("#settings-form");
  if (old && old.dataset.dirty === "1") {
    // keep what the operator is typing; only the compression lock follows the sync
    old.elements.compression.disabled = !operate || running;
    return;
  }
  const ro = !operate;
  const ret = policy.retention || {};
  const num = (id, label, value, hint, attrs = {}) => h("div", {},
    h("label", { for: id }, label, hint ? h("span", { class: "hint" }, ` — ${hint}`) : null),
    h("input", { id, name: id, type: "number", value: value ?? "", disabled: ro, min: 0, ...attrs }));
  const lockNote = running
    ? "A sync is running: pause it to change compression; it resumes with the new setting and sends nothing twice."
    : (host.status.points ? "Applies to the blocks each sync still has to send." : "Set it before the first sync, or change it any time by pausing a sync.");
  const form = h("form", { class: "stack", id: "settings-form" },
    h("label", { class: "check", for: "compression" },
      h("input", { type: "checkbox", id: "compression", name: "compression", checked: policy.compression !== "none",
        disabled: ro || running, "aria-describedby": "compression-note" }),
      "Compress blocks (zstd)"),
    h("p", { class: "hint", id: "compression-note" }, lockNote),
    num("rpo", "RPO target (minutes)", Math.round(policy.rpo_seconds / 60), "a sync starts so that no restore point gets older", { min: 1 }),
    num("full", "Full resync every (hours)", policy.full_resync_seconds ? policy.full_resync_seconds / 3600 : "", "empty: never"),
    num("bwlimit", "Bandwidth limit (MiB/s)", policy.bwlimit ? +(policy.bwlimit / 1048576).toFixed(3) : 0, "0: unlimited", { step: "any" }),
    h("fieldset", {}, h("legend", {}, "Retention (keep …)"),
      h("div", { class: "grid2", style: "grid-template-columns:repeat(auto-fit,minmax(7em,1fr))" },
        // `last`…: what consoles before the keep_ names wrote; the server reads both
        KEEP.map((k) => num(`keep-${k}`, k, ret[`keep_${k}`] ?? ret[k] ?? "", null))),
      h("p", { class: "hint", id: "retention-note" }, retentionNote(ret))),
    policy.bandwidth_windows.length ? h("p", { class: "hint" }, "Windows: ",
      policy.bandwidth_windows.map((w) => `${w.start}–${w.end} UTC at ${bytes(w.rate)}/s`).join("; ")) : null,
    h("p", { class: "hint" }, `Policy ${policy.name}; changes apply to every host that uses it.`),
    operate ? h("div", { class: "row" }, h("button", { type: "submit", id: "save-settings" }, "Save settings"),
      sync && ["running"].includes(sync.state) ? h("button", { type: "button", class: "secondary", id: "pause-sync",
        onclick: (e) => act(e.target, () => post(`jobs/${sync.id}/pause`), `Sync ${sync.id} pausing`) }, "Pause sync") : null,
      sync && sync.state === "paused" ? h("button", { type: "button", class: "secondary", id: "resume-sync",
        onclick: (e) => act(e.target, () => post(`jobs/${sync.id}/resume`), `Sync ${sync.id} resumed`) }, "Resume sync") : null) : null);
  form.addEventListener("input", () => { form.dataset.dirty = "1"; });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = (id) => form.elements[id].value;
    const body = {
      rpo_seconds: Math.max(30, Math.round(Number(v("rpo")) * 60)),
      full_resync_seconds: v("full") ? Math.round(Number(v("full")) * 3600) : null,
      bwlimit: Math.round(Number(v("bwlimit") || 0) * 1048576),
      // the keep counts from the form; the intervals and gc margin as they were
      retention: Object.fromEntries([
        ...Object.entries(ret).filter(([k]) => !k.startsWith("keep_") && !KEEP.includes(k)),
        ...KEEP.filter((k) => v(`keep-${k}`) !== "").map((k) => [`keep_${k}`, Number(v(`keep-${k}`))])]),
    };
    if (!form.elements.compression.disabled) body.compression = form.elements.compression.checked ? "zstd" : "none";
    act(form.querySelector("button[type=submit]"), async () => {
      st.policy = await patch(`policies/${encodeURIComponent(policy.name)}`, body);
      form.dataset.dirty = "0";
    }, "Settings saved");
  });
  fill(st.parts.settings, form);
}

function drawPoints(st) {
  const { points, session, host } = st;
  const operate = session.can("operator");
  // the timeline: one dot per point, placed by time; colour = consistency, ring = verified
  if (points.length) {
    const ts = points.map((p) => new Date(p.created).getTime());
    const t0 = Math.min(...ts);
    const t1 = Math.max(...ts, t0 + 1);
    fill(st.parts.timeline, h("div", { class: "timeline", role: "list", "aria-label": "Restore-point timeline" },
      points.slice(0, 200).map((p, i) => h("a", {
        role: "listitem", href: `#point-${p.id}`, class: `${p.consistency}${p.verified ? " verified" : ""}`,
        style: `left:${(((ts[i] - t0) / (t1 - t0)) * 100).toFixed(2)}%`,
        title: `${p.id}: ${p.consistency}${p.verified ? ", verified" : ""}`,
        "aria-label": `point ${p.id}, ${p.consistency} consistent${p.verified ? ", verified" : ""}`,
      })),
      h("span", { class: "tl-label", style: "left:0" }, new Date(t0).toLocaleString()),
      h("span", { class: "tl-label", style: "right:0" }, new Date(t1).toLocaleString())));
  } else {
    fill(st.parts.timeline);
  }
  const trs = points.map((p) => h("tr", { id: `point-${p.id}`, dataset: { point: p.id } },
    cell("Point", h("code", {}, p.id)), cell("Created", h("span", {}, when(p.created), h("div", { class: "muted" }, ago(p.created)))),
    cell("Consistency", h("span", {}, badge(p.consistency),
      ...(p.notes || []).map((n) => h("div", { class: "muted note" }, n)))),
    cell("Status", h("span", {}, badge(p.status), " ", p.verified ? badge("verified") : null,
      p.drill && p.drill.verdict ? h("span", {}, " ", badge(`drill ${p.drill.verdict}`, p.drill.verdict)) : null)),
    cell("Size", bytes(p.size), true), cell("Read", bytes(p.read_bytes), true),
    cell("Stored", bytes(p.stored_bytes), true), cell("Codec", p.codec),
    cell("Took", duration(p.duration_s), true),
    cell("Freeze", duration(p.freeze_s), true),
    operate ? cell("Actions", pointActions(st, p)) : null));
  fill(st.parts.points, table([{ label: "Point" }, { label: "Created" }, { label: "Consistency" }, { label: "Status" },
    { label: "Size", num: true }, { label: "Read", num: true }, { label: "Stored", num: true }, { label: "Codec" },
    { label: "Took", num: true }, { label: "Freeze", num: true }, ...(operate ? [{ label: "Actions" }] : [])], trs,
  { empty: `No restore point of ${host.name} yet.`, caption: "Restore points", attrs: { id: "points-table" } }));
}

function pointActions(st, p) {
  const box = h("div", { class: "actions" });
  const restoreBtn = h("button", { type: "button", class: "secondary", "aria-label": `Restore point ${p.id}`,
    onclick: () => restoreForm(st, p, box) }, "Restore");
  box.append(restoreBtn);
  if (st.session.kinds.jobs.drill) {
    const d = h("button", { type: "button", class: "secondary", "aria-label": `Drill point ${p.id}`,
      onclick: () => act(d, () => runDrill(st, p.id), `Drill of point ${p.id} queued`) }, "Drill");
    box.append(d);
  }
  return box;
}

function restoreForm(st, p, box) {
  if (box.querySelector("form")) return;
  const id = `restore-to-${p.id}`;
  const form = h("form", { class: "stack" },
    h("div", {}, h("label", { for: id }, "Restore to", h("span", { class: "hint" }, " — a directory or device path where the job runs")),
      h("input", { id, type: "text", required: true })),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "force" }), "Overwrite existing files or devices"),
    h("div", { class: "row" }, h("button", { type: "submit", class: "danger" }, "Restore"),
      h("button", { type: "button", class: "secondary", onclick: () => form.remove() }, "Close")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const to = form.elements[id].value;
    const force = form.elements.force.checked;
    if (!(await confirmAction(`Write point ${p.id} of ${st.name} to ${to}${force ? ", overwriting what is there" : ""}?`, "Restore"))) return;
    await act(form.querySelector("button[type=submit]"), async () => {
      await post("jobs", { kind: "restore", host: st.name, params: { point: p.id, to, force } });
      form.remove();
    }, `Restore of ${p.id} queued`);
  });
  box.append(form);
  form.elements[id].focus();
}

async function runDrill(st, point) {
  const params = { point };
  const job = await post("jobs", { kind: "drill", host: st.name, params });
  announce(`drill job ${job.id} queued`);
  return job;
}

async function drawDrills(st) {
  try {
    const reports = await get(`/api/v1/console/drills?host=${encodeURIComponent(st.name)}&limit=20`);
    fill(st.parts.drills, drillTable(reports, "No drill of this host yet."));
  } catch (err) {
    fill(st.parts.drills, h("p", { class: "error" }, err.message));
  }
}

export function drillTable(reports, empty, withHost = false) {
  const trs = reports.map((r) => h("tr", { dataset: { drill: r.id } },
    cell("Drill", h("a", { href: `#/drills/${encodeURIComponent(r.host)}/${encodeURIComponent(r.id)}` }, r.id)),
    withHost ? cell("Host", r.host) : null,
    cell("Verdict", badge(r.verdict)), cell("Point", h("code", {}, r.point)),
    cell("Started", when(r.started)), cell("RTO", r.rto_all_s !== null && r.rto_all_s !== undefined ? duration(r.rto_all_s) : "—", true),
    cell("Reason", r.reason)));
  return table([{ label: "Drill" }, ...(withHost ? [{ label: "Host" }] : []), { label: "Verdict" }, { label: "Point" },
    { label: "Started" }, { label: "RTO", num: true }, { label: "Reason" }], trs, { empty, caption: "Drill reports", attrs: { class: "responsive drills" } });
}

