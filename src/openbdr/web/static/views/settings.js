// Settings: targets, policies, users and API tokens, agents and enrolment tokens, audit log.
import { del, get, post } from "../js/api.js";
import { act, ago, badge, bytes, cell, confirmAction, duration, fill, h, table, when } from "../js/dom.js";
import { jobSummary } from "./common.js";
import { notifications } from "./notifications.js";

const TABS = [["targets", "Targets", "viewer"], ["users", "Users and tokens", "admin"],
  ["agents", "Agents", "admin"], ["notifications", "Notifications", "viewer"],
  ["audit", "Audit log", "admin"]];

export const settingsView = {
  async enter(st) {
    st.tab = st.params[0] || "targets";
    st.title = "Settings";
    const tabs = TABS.filter(([, , role]) => st.session.can(role));
    st.body = h("div", { id: `settings-${st.tab}` });
    fill(st.root, h("h1", {}, "Settings"),
      h("nav", { class: "tabs", "aria-label": "Settings" }, tabs.map(([k, label]) =>
        h("a", { href: `#/settings/${k}`, "aria-current": k === st.tab ? "page" : null }, label))),
      st.body);
    if (!tabs.find(([k]) => k === st.tab)) {
      fill(st.body, h("p", {}, "Only admins can see users, API tokens, agents and the audit log."));
      st.noop = true;
      return;
    }
    await this.refresh(st);
  },
  async refresh(st) {
    if (st.noop) return;
    if (st.body.querySelector("form[data-dirty='1']")) return; // do not wipe a form being filled in
    await { targets, users, agents, notifications, audit }[st.tab](st);
  },
};

function dirtyTracking(form) {
  form.addEventListener("input", () => { form.dataset.dirty = "1"; });
  return form;
}

function secretBox(label, secret) {
  return h("div", { class: "card", role: "status" }, h("p", {}, label),
    h("p", { class: "secret", tabindex: 0 }, secret), h("p", { class: "hint" }, "Shown once: copy it now."));
}

// "last 3, daily 7 · every 1 d · gc margin 1 h" (defaults as in control/maintenance.py)
function retentionText(r) {
  const keep = ["last", "hourly", "daily", "weekly", "monthly"]
    .map((k) => [k, Number(r[`keep_${k}`] ?? r[k] ?? 0)]).filter(([, n]) => n > 0);
  if (!keep.length) return "keep all";
  const margin = r.gc_margin_seconds ?? 3600;
  return `${keep.map(([k, n]) => `${k} ${n}`).join(", ")} · every ${duration(r.every_seconds || 86400)}` +
    ` · gc every ${duration(r.gc_every_seconds || 7 * 86400)}, margin ${margin ? duration(margin) : "none"}`;
}

async function targets(st) {
  const [rows, policies, gcs] = await Promise.all([get("targets"), get("policies"), get("jobs?kind=gc&limit=200")]);
  const admin = st.session.can("admin");
  const operate = st.session.can("operator");
  // each target's newest finished gc (jobs come newest first)
  const lastGc = (name) => gcs.find((j) => j.target === name && !j.host && ["succeeded", "failed"].includes(j.state));
  const gcCell = (j) => (j ? h("span", {}, j.state === "succeeded" ? jobSummary(j) : badge(j.state),
    h("span", { class: "muted" }, ` · ${ago(j.finished)}`)) : h("span", { class: "muted" }, "never"));
  const trs = rows.map((t) => h("tr", { dataset: { target: t.name } }, cell("Name", t.name), cell("URL", h("code", {}, t.url)),
    cell("Secrets", t.has_secrets ? "sealed" : "none"), cell("Last refresh", when(t.last_refresh)),
    cell("Last gc", gcCell(lastGc(t.name))),
    operate ? cell("Actions", h("div", { class: "actions" },
      (() => { const b = h("button", { type: "button", class: "secondary", onclick: () => act(b, async () => {
        const r = await post(`targets/${encodeURIComponent(t.name)}/refresh`);
        return r;
      }, `Target ${t.name} re-read`) }, "Refresh points"); return b; })(),
      admin ? (() => { const b = h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction(`Remove target ${t.name} from the catalog? The repository itself is not touched.`, "Remove"))) return;
        await act(b, () => del(`targets/${encodeURIComponent(t.name)}`), `Target ${t.name} removed`);
      } }, "Remove"); return b; })() : null)) : null));
  const parts = [h("section", { class: "card" }, h("h2", {}, "Targets (repositories)"),
    table([{ label: "Name" }, { label: "URL" }, { label: "Secrets" }, { label: "Last refresh" }, { label: "Last gc" }, ...(operate ? [{ label: "Actions" }] : [])],
      trs, { empty: "No target yet.", caption: "Targets", attrs: { id: "targets-table" } }))];
  parts.push(...(await volumeCards(rows)));
  if (admin) {
    const form = dirtyTracking(h("form", { class: "stack", id: "add-target-form" },
      h("div", {}, h("label", { for: "t-name" }, "Name"), h("input", { type: "text", id: "t-name", required: true })),
      h("div", {}, h("label", { for: "t-url" }, "URL", h("span", { class: "hint" }, " — a directory, or s3://bucket/prefix")),
        h("input", { type: "text", id: "t-url", required: true })),
      h("div", {}, h("label", { for: "t-pass" }, "Repository passphrase", h("span", { class: "hint" }, " — optional; encrypts a new repository, sealed in the catalog")),
        h("input", { type: "password", id: "t-pass", autocomplete: "new-password" })),
      h("label", { class: "check" }, h("input", { type: "checkbox", id: "t-init", checked: true }), "Create the repository if it does not exist"),
      h("div", {}, h("button", { type: "submit" }, "Add target"))));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const pass = form.querySelector("#t-pass").value;
      act(form.querySelector("button[type=submit]"), async () => {
        await post("targets", { name: form.querySelector("#t-name").value.trim(), url: form.querySelector("#t-url").value.trim(),
          init: form.querySelector("#t-init").checked, secrets: pass ? { passphrase: pass } : null });
        form.dataset.dirty = "0";
        await targets(st);
      }, "Target added");
    });
    parts.push(h("section", { class: "card" }, h("h2", {}, "Add a target"), form));
  }
  const ptrs = policies.map((p) => h("tr", {}, cell("Policy", p.name), cell("RPO", `${Math.round(p.rpo_seconds / 60)} min`),
    cell("Compression", p.compression), cell("Bandwidth", p.bwlimit ? `${bytes(p.bwlimit)}/s` : "unlimited"),
    cell("Retention", retentionText(p.retention || {})),
    cell("Enabled", p.enabled ? "yes" : "no")));
  parts.push(h("section", { class: "card" }, h("h2", {}, "Policies"),
    table([{ label: "Policy" }, { label: "RPO" }, { label: "Compression" }, { label: "Bandwidth" }, { label: "Retention" }, { label: "Enabled" }],
      ptrs, { empty: "No policy yet.", caption: "Policies" })));
  fill(st.body, parts);
}

// Block-mode (gateway://) targets: each protected disk's volume at the DR site, its
// snapshots (one per restore point) and the bytes written into it (decompressed) and
// carried to it (on the wire). A gateway that does not answer says so in its card.
async function volumeCards(rows) {
  const gateways = rows.filter((t) => t.url.startsWith("gateway://"));
  const lists = await Promise.all(gateways.map((t) =>
    get(`targets/${encodeURIComponent(t.name)}/volumes`).catch((e) => e)));
  return gateways.map((t, k) => {
    const vols = lists[k];
    const id = `volumes-${t.name}`;
    if (!Array.isArray(vols)) {
      return h("section", { class: "card", id },
        h("h2", {}, `Volumes of ${t.name}`),
        h("p", { class: "error", role: "status" }, `The gateway did not answer: ${vols.message}`,
          vols.hint ? h("span", { class: "hint" }, ` — ${vols.hint}`) : null));
    }
    const trs = vols.map((v) => h("tr", { dataset: { volume: v.volume } },
      cell("Volume", h("code", {}, v.volume)), cell("Host", v.host), cell("Size", bytes(v.size), true),
      cell("Snapshots", v.snapshots.length ? h("span", { title: v.snapshots.join("\n") },
        `${v.snapshots.length} · newest ${v.snapshots[v.snapshots.length - 1]}`) : h("span", { class: "muted" }, "none")),
      cell("Written", bytes(v.written_bytes), true), cell("On the wire", bytes(v.stored_bytes), true)));
    return h("section", { class: "card", id },
      h("h2", {}, `Volumes of ${t.name}`, h("span", { class: "hint" }, " — block mode: one volume per disk, a snapshot per restore point")),
      table([{ label: "Volume" }, { label: "Host" }, { label: "Size", num: true }, { label: "Snapshots" },
        { label: "Written", num: true }, { label: "On the wire", num: true }],
      trs, { empty: "No volume yet.", caption: `Volumes of ${t.name}`, attrs: { class: "responsive volumes-table" } }));
  });
}

async function users(st) {
  const [us, tokens] = await Promise.all([get("users"), get("tokens")]);
  const out = h("div", { id: "secret-out" });
  const utrs = us.map((u) => h("tr", {}, cell("User", u.name), cell("Role", badge(u.role, "verified")), cell("Created", when(u.created)),
    cell("Actions", (() => { const b = h("button", { type: "button", class: "danger", "aria-label": `Delete user ${u.name}`, onclick: async () => {
      if (!(await confirmAction(`Delete user ${u.name} and all their tokens?`, "Delete user"))) return;
      await act(b, () => del(`users/${u.id}`), `User ${u.name} deleted`);
    } }, "Delete"); return b; })())));
  const ttrs = tokens.map((t) => h("tr", {}, cell("Token", t.name), cell("User", t.user), cell("Role", t.role),
    cell("Created", when(t.created)), cell("Expires", when(t.expires)), cell("Last used", when(t.last_used)),
    cell("Actions", (() => { const b = h("button", { type: "button", class: "danger", "aria-label": `Revoke token ${t.id}`, onclick: async () => {
      if (!(await confirmAction(`Revoke token ${t.name} of ${t.user}? Scripts using it stop working.`, "Revoke"))) return;
      await act(b, () => del(`tokens/${t.id}`), "Token revoked");
    } }, "Revoke"); return b; })())));
  const uform = dirtyTracking(h("form", { class: "stack", id: "add-user-form" },
    h("div", {}, h("label", { for: "u-name" }, "User name"), h("input", { type: "text", id: "u-name", required: true })),
    h("div", {}, h("label", { for: "u-role" }, "Role"), h("select", { id: "u-role" }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)))),
    h("div", {}, h("label", { for: "u-pass" }, "Password", h("span", { class: "hint" }, " — at least 8 characters; empty: API tokens only")),
      h("input", { type: "password", id: "u-pass", autocomplete: "new-password", minlength: 8 })),
    h("div", {}, h("button", { type: "submit" }, "Add user"))));
  uform.addEventListener("submit", (e) => {
    e.preventDefault();
    act(uform.querySelector("button"), async () => {
      await post("users", { name: uform.querySelector("#u-name").value.trim(), role: uform.querySelector("#u-role").value,
        password: uform.querySelector("#u-pass").value || null });
      uform.dataset.dirty = "0";
      await users(st);
    }, "User added");
  });
  const tform = dirtyTracking(h("form", { class: "stack", id: "add-token-form" },
    h("div", {}, h("label", { for: "tk-user" }, "For user"), h("select", { id: "tk-user" }, us.map((u) => h("option", { value: u.name }, `${u.name} (${u.role})`)))),
    h("div", {}, h("label", { for: "tk-name" }, "Token name"), h("input", { type: "text", id: "tk-name", value: "api", required: true })),
    h("div", {}, h("label", { for: "tk-days" }, "Expires in (days)", h("span", { class: "hint" }, " — empty: never")), h("input", { type: "number", id: "tk-days", min: 1 })),
    h("div", {}, h("button", { type: "submit" }, "Create token"))));
  tform.addEventListener("submit", (e) => {
    e.preventDefault();
    act(tform.querySelector("button"), async () => {
      const days = tform.querySelector("#tk-days").value;
      const t = await post("tokens", { user: tform.querySelector("#tk-user").value, name: tform.querySelector("#tk-name").value,
        expires_in_days: days ? Number(days) : null });
      tform.dataset.dirty = "1"; // keep the secret on screen
      fill(out, secretBox(`API token ${t.name} for ${t.user} (${t.role}):`, t.token));
    }, "Token created");
  });
  fill(st.body,
    h("section", { class: "card" }, h("h2", {}, "Users"), table([{ label: "User" }, { label: "Role" }, { label: "Created" }, { label: "Actions" }], utrs, { caption: "Users", attrs: { id: "users-table" } })),
    h("div", { class: "grid2" }, h("section", { class: "card" }, h("h2", {}, "Add a user"), uform),
      h("section", { class: "card" }, h("h2", {}, "Create an API token"), tform, out)),
    h("section", { class: "card" }, h("h2", {}, "API tokens"), table([{ label: "Token" }, { label: "User" }, { label: "Role" }, { label: "Created" },
      { label: "Expires" }, { label: "Last used" }, { label: "Actions" }], ttrs, { caption: "API tokens", attrs: { id: "tokens-table" } })));
}

async function agents(st) {
  const rows = await get("agents");
  const out = h("div");
  const trs = rows.map((a) => h("tr", {}, cell("Agent", a.name), cell("Pool", a.pool), cell("Version", a.version || "—"),
    cell("Enrolled", when(a.enrolled)), cell("Last seen", when(a.last_seen)), cell("State", badge(a.disabled ? "disabled" : "ok")),
    cell("Actions", a.disabled ? "—" : (() => { const b = h("button", { type: "button", class: "danger", onclick: async () => {
      if (!(await confirmAction(`Disable agent ${a.name}? Its credential stops working; its jobs move on when their leases expire.`, "Disable"))) return;
      await act(b, () => del(`agents/${a.id}`), `Agent ${a.name} disabled`);
    } }, "Disable"); return b; })())));
  const form = dirtyTracking(h("form", { class: "stack", id: "enrol-form" },
    h("div", {}, h("label", { for: "e-pool" }, "Pool", h("span", { class: "hint" }, " — a host name, or a proxy group that hosts name as their pool")),
      h("input", { type: "text", id: "e-pool", required: true })),
    h("div", {}, h("label", { for: "e-hours" }, "Valid for (hours)"), h("input", { type: "number", id: "e-hours", value: 24, min: 1, max: 720 })),
    h("div", {}, h("button", { type: "submit" }, "Create enrolment token"))));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    act(form.querySelector("button"), async () => {
      const t = await post("agents/enrolment-tokens", { pool: form.querySelector("#e-pool").value.trim(),
        expires_in_hours: Number(form.querySelector("#e-hours").value || 24) });
      fill(out, secretBox(`One-time enrolment token for pool ${t.pool} (until ${new Date(t.expires).toLocaleString()}); on the agent: openbdr agent enrol --token …`, t.token));
    }, "Enrolment token created");
  });
  fill(st.body, h("section", { class: "card" }, h("h2", {}, "Agents"),
    table([{ label: "Agent" }, { label: "Pool" }, { label: "Version" }, { label: "Enrolled" }, { label: "Last seen" }, { label: "State" }, { label: "Actions" }],
      trs, { empty: "No agent has enrolled.", caption: "Agents", attrs: { id: "agents-table" } })),
  h("section", { class: "card" }, h("h2", {}, "Enrol an agent"), form, out));
}

async function audit(st) {
  const rows = await get("audit?limit=300");
  const trs = rows.map((a) => h("tr", {}, cell("When", when(a.ts)), cell("Who", a.actor), cell("Action", a.action),
    cell("Object", `${a.object_type} ${a.object_id}`), cell("Detail", h("code", {}, JSON.stringify(a.detail)))));
  fill(st.body, h("section", { class: "card" }, h("h2", {}, "Audit log"),
    table([{ label: "When" }, { label: "Who" }, { label: "Action" }, { label: "Object" }, { label: "Detail" }], trs,
      { caption: "Audit log", attrs: { id: "audit-table" } })));
}


