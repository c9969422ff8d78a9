// Platforms: list, add (admin), test; a platform's page discovers its VMs and protects
// several of them as hosts in one action.
import { del, get, post } from "../js/api.js";
import { act, badge, bytes, cell, confirmAction, fill, h, table, toast, when } from "../js/dom.js";

const enc = encodeURIComponent;

function testBadge(p) {
  if (p.last_test_ok === null || p.last_test_ok === undefined) return h("span", { class: "muted" }, "never tested");
  return h("span", {}, badge(p.last_test_ok ? "ok" : "failed"), " ",
    h("span", { class: "hint" }, p.last_test_message || ""));
}

function button(label, cls, fn, attrs = {}) {
  const b = h("button", { type: "button", class: cls, ...attrs, onclick: () => fn(b) }, label);
  return b;
}

export const platformsView = {
  async enter(st) {
    st.title = "Platforms";
    await this.refresh(st);
  },
  async refresh(st) {
    if (st.root.querySelector("form[data-dirty='1']")) return; // a form being filled in
    const rows = await get("platforms");
    const operate = st.session.can("operator");
    const admin = st.session.can("admin");
    // the last test's answer stays on screen across the live refreshes
    const last = st.lastTest;
    const result = h("p", { id: "platform-test-result", role: "status" },
      last ? [badge(last.ok ? "ok" : "failed"), ` ${last.text}`] : null);
    const trs = rows.map((p) => h("tr", { "data-platform": p.name },
      cell("Name", h("a", { href: `#/platforms/${enc(p.name)}` }, p.name)), cell("Type", p.type),
      cell("Endpoint", h("code", {}, p.endpoint)), cell("Proxy pool", p.pool || h("span", { class: "muted" }, "the server")),
      cell("Last test", testBadge(p)), cell("Last discovery", when(p.last_discovery)),
      cell("VMs", String(p.vm_count), true), cell("Hosts", String(p.hosts), true),
      operate ? cell("Actions", h("div", { class: "actions" },
        button("Test", "secondary", (b) => act(b, async () => {
          fill(result, `Testing ${p.name}…`);
          try {
            const t = await post(`platforms/${enc(p.name)}/test`);
            st.lastTest = { ok: true, text: `${p.name}: ${t.message}` };
            toast(`Platform ${p.name}: ${t.message}`);
          } catch (err) {
            st.lastTest = { ok: false, text: `${err.message}${err.hint ? ` — ${err.hint}` : ""}` };
            throw err;
          } finally {
            await this.refresh(st);
          }
        }), { "aria-label": `Test platform ${p.name}` }),
        h("a", { class: "button secondary", href: `#/platforms/${enc(p.name)}` }, "Discover"),
        admin ? button("Remove", "danger", async (b) => {
          if (!(await confirmAction(`Remove platform ${p.name} from the catalog?`, "Remove"))) return;
          await act(b, async () => { await del(`platforms/${enc(p.name)}`); await this.refresh(st); }, `Platform ${p.name} removed`);
        }, { "aria-label": `Remove platform ${p.name}` }) : null)) : null));
    const cols = [{ label: "Name" }, { label: "Type" }, { label: "Endpoint" }, { label: "Proxy pool" }, { label: "Last test" },
      { label: "Last discovery" }, { label: "VMs", num: true }, { label: "Hosts", num: true }, ...(operate ? [{ label: "Actions" }] : [])];
    st.table = h("section", { class: "card" }, h("h2", {}, "Platforms"),
      table(cols, trs, { empty: "No platform yet.", caption: "Platforms", attrs: { id: "platforms-table" } }), result);
    fill(st.root, h("h1", {}, "Platforms"),
      h("p", { class: "hint" }, "Hypervisors and clouds whose VMs are protected without an agent: "
        + "a sync proxy of the platform's pool (or the server) snapshots and reads them."),
      st.table, admin ? addForm(st, this) : null);
  },
};

function addForm(st, view) {
  const types = (st.session.kinds && st.session.kinds.platforms) || {};
  if (!Object.keys(types).length) {
    return h("section", { class: "card" }, h("h2", {}, "Add a platform"),
      h("p", { class: "error" }, "No platform type is installed on this server."));
  }
  const typeSel = h("select", { id: "p-type" }, Object.entries(types).map(([k, v]) => h("option", { value: k }, `${k} — ${v.description}`)));
  const creds = h("fieldset", { id: "p-credentials" });
  const draw = () => fill(creds, h("legend", {}, "Credentials (sealed in the catalog, never shown again)"),
    Object.entries(types[typeSel.value].credentials || {}).map(([n, d]) => h("div", {},
      h("label", { for: `p-cred-${n}` }, n, h("span", { class: "hint" }, ` — ${d}`)),
      h("input", { type: /pass|secret|key|token/i.test(n) ? "password" : "text", id: `p-cred-${n}`, "data-cred": n, autocomplete: "off" }))));
  typeSel.addEventListener("change", draw);
  const form = h("form", { class: "stack", id: "add-platform-form" },
    h("div", {}, h("label", { for: "p-name" }, "Name"), h("input", { type: "text", id: "p-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" })),
    h("div", {}, h("label", { for: "p-type" }, "Platform type"), typeSel),
    h("div", {}, h("label", { for: "p-endpoint" }, "Endpoint"), h("input", { type: "text", id: "p-endpoint", required: true })),
    creds,
    h("div", {}, h("label", { for: "p-pool" }, "Proxy pool", h("span", { class: "hint" }, " — empty: the server reaches the platform itself")),
      h("input", { type: "text", id: "p-pool" })),
    h("div", {}, h("button", { type: "submit", id: "add-platform-submit" }, "Add platform")));
  form.addEventListener("input", () => { form.dataset.dirty = "1"; });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const credentials = {};
    for (const el of form.querySelectorAll("[data-cred]")) if (el.value) credentials[el.dataset.cred] = el.value;
    const name = form.querySelector("#p-name").value.trim();
    act(form.querySelector("#add-platform-submit"), async () => {
      await post("platforms", { name, type: typeSel.value, endpoint: form.querySelector("#p-endpoint").value.trim(),
        credentials: Object.keys(credentials).length ? credentials : null, pool: form.querySelector("#p-pool").value.trim() || null });
      form.dataset.dirty = "0";
      await view.refresh(st);
    }, `Platform ${name} added`);
  });
  draw();
  return h("section", { class: "card" }, h("h2", {}, "Add a platform"), form);
}

function diskText(d) {
  const bits = [d.name, bytes(d.size), d.bus, d.format].filter(Boolean).join(" ");
  return d.unsupported ? `${bits} (cannot be protected: ${d.unsupported})` : bits;
}

export const platformView = {
  async enter(st) {
    st.name = st.params[0];
    st.title = `Platform ${st.name}`;
    const [p, last, targets, policies] = await Promise.all([get(`platforms/${enc(st.name)}`),
      get(`platforms/${enc(st.name)}/vms`), get("targets"), get("policies")]);
    st.platform = p;
    st.targets = targets;
    st.policies = policies;
    st.vmsBox = h("div", { id: "vms" });
    st.error = h("p", { class: "error", role: "alert", id: "discover-error" });
    const operate = st.session.can("operator");
    const discoverBtn = operate ? button("Discover VMs", "", (b) => act(b, async () => {
      st.error.textContent = "";
      try {
        const got = await post(`platforms/${enc(st.name)}/discover`);
        drawVms(st, got);
        return got;
      } catch (err) {
        st.error.textContent = `${err.message}${err.hint ? ` — ${err.hint}` : ""}`;
        throw err;
      }
    }, "Discovery finished"), { id: "discover" }) : null;
    fill(st.root, h("h1", {}, `Platform ${p.name}`),
      h("section", { class: "card" },
        h("p", {}, `${p.type} at `, h("code", {}, p.endpoint), ` · jobs on ${p.pool ? `proxies of pool ${p.pool}` : "the server"}`),
        h("p", {}, "Last test: ", testBadge(p), " · last discovery: ", when(p.last_discovery)),
        h("div", { class: "row" }, discoverBtn, h("a", { href: "#/platforms", class: "button secondary" }, "All platforms")),
        st.error),
      st.vmsBox);
    drawVms(st, last);
  },
};

function drawVms(st, got) {
  const operate = st.session.can("operator");
  const vms = got.vms || [];
  const trs = vms.map((vm) => {
    const blocked = vm.host || vm.disks.some((d) => d.unsupported);
    return h("tr", { "data-vm": vm.id },
      operate ? cell("Select", h("input", { type: "checkbox", class: "vm-pick", value: vm.id, disabled: !!blocked, "aria-label": `Select VM ${vm.name}` })) : null,
      cell("VM", vm.name), cell("Id", h("code", {}, vm.id)), cell("Power", badge(vm.power_state, vm.power_state === "running" ? "ok" : "none")),
      cell("Disks", h("ul", { class: "plain" }, vm.disks.map((d) => h("li", {}, diskText(d))))),
      cell("Protected by", vm.host ? h("a", { href: `#/hosts/${enc(vm.host)}` }, vm.host) : h("span", { class: "muted" }, "—")));
  });
  const cols = [...(operate ? [{ label: "Select" }] : []), { label: "VM" }, { label: "Id" }, { label: "Power" }, { label: "Disks" }, { label: "Protected by" }];
  const parts = [h("section", { class: "card" }, h("h2", {}, "Virtual machines"),
    h("p", { class: "hint" }, got.discovered ? ["Discovered ", when(got.discovered)] : "Not discovered yet."),
    table(cols, trs, { empty: "No VM found.", caption: "Virtual machines", attrs: { id: "vms-table" } }))];
  if (operate && vms.length) parts.push(protectForm(st));
  fill(st.vmsBox, parts);
}

function protectForm(st) {
  const form = h("form", { class: "stack", id: "protect-form" },
    h("div", {}, h("label", { for: "protect-target" }, "Target (repository)"),
      h("select", { id: "protect-target" }, st.targets.map((t) => h("option", { value: t.name }, `${t.name} — ${t.url}`)))),
    h("div", {}, h("label", { for: "protect-policy" }, "Policy"),
      h("select", { id: "protect-policy" }, h("option", { value: "" }, "none (no scheduled syncs)"),
        st.policies.map((p) => h("option", { value: p.name }, `${p.name} (RPO ${Math.round(p.rpo_seconds / 60)} min)`)))),
    h("div", {}, h("button", { type: "submit", id: "protect-submit" }, "Protect selected VMs")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const ids = Array.from(st.vmsBox.querySelectorAll(".vm-pick:checked")).map((x) => x.value);
    if (!ids.length) { toast("Select at least one VM", true); return; }
    act(form.querySelector("#protect-submit"), async () => {
      const hosts = await post(`platforms/${enc(st.name)}/protect`, { vms: ids, target: form.querySelector("#protect-target").value,
        policy: form.querySelector("#protect-policy").value || null });
      toast(`Protected as host${hosts.length > 1 ? "s" : ""} ${hosts.map((x) => x.name).join(", ")}`);
      drawVms(st, await get(`platforms/${enc(st.name)}/vms`));
    });
  });
  return h("section", { class: "card" }, h("h2", {}, "Protect the selected VMs"), form);
}
