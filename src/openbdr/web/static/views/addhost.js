// Add a host: one form per installed source type (from /kinds), a target and a policy.
import { get, post } from "../js/api.js";
import { act, fill, h } from "../js/dom.js";

function fieldInput(name, desc) {
  const id = `src-${name}`;
  const kind = String(desc).toLowerCase();
  if (kind.startsWith("bool")) {
    return h("label", { class: "check", for: id }, h("input", { type: "checkbox", id, name: id, checked: name === "valid_only" }),
      name, h("span", { class: "hint" }, ` — ${desc}`));
  }
  const label = h("label", { for: id }, name, h("span", { class: "hint" }, ` — ${desc}${kind.startsWith("list") ? " (one per line)" : ""}`));
  return h("div", {}, label, kind.startsWith("list")
    ? h("textarea", { id, name: id, required: name === "paths" })
    : h("input", { id, name: id, type: "text" }));
}

function readSource(type, fields, form) {
  const spec = { type };
  for (const [name, desc] of Object.entries(fields)) {
    const el = form.elements[`src-${name}`];
    const kind = String(desc).toLowerCase();
    if (kind.startsWith("bool")) spec[name] = el.checked;
    else if (kind.startsWith("list")) spec[name] = el.value.split("\n").map((s) => s.trim()).filter(Boolean);
    else if (el.value.trim()) spec[name] = el.value.trim();
  }
  return spec;
}

export const addHostView = {
  async enter(st) {
    st.title = "Add host";
    if (!st.session.can("operator")) {
      fill(st.root, h("h1", {}, "Add host"), h("p", {}, "Only operators and admins can add hosts."));
      return;
    }
    const [targets, policies] = await Promise.all([get("targets"), get("policies")]);
    // a platform's VMs are protected from the platform's page (its credentials live there)
    const platformTypes = st.session.kinds.platforms || {};
    const sources = Object.fromEntries(Object.entries(st.session.kinds.sources).filter(([k]) => !(k in platformTypes)));
    const srcBox = h("fieldset", { id: "source-fields" });
    const typeSel = h("select", { id: "source-type", name: "type" },
      Object.entries(sources).map(([k, v]) => h("option", { value: k }, `${k} — ${v.description}`)));
    const drawSource = () => fill(srcBox, h("legend", {}, `Source: ${typeSel.value}`),
      Object.entries(sources[typeSel.value].fields).map(([n, d]) => fieldInput(n, d)));
    typeSel.addEventListener("change", drawSource);
    const newPolicy = h("div", { id: "new-policy" },
      h("label", { class: "check", for: "new-compression" }, h("input", { type: "checkbox", id: "new-compression" }),
        "Compress blocks (zstd)", h("span", { class: "hint" }, " — off by default")),
      h("label", { for: "new-rpo" }, "RPO target (minutes)"),
      h("input", { type: "number", id: "new-rpo", min: 1, value: 60 }));
    const polSel = h("select", { id: "host-policy" }, h("option", { value: "" }, "a new policy for this host"),
      policies.map((p) => h("option", { value: p.name }, `${p.name} (RPO ${Math.round(p.rpo_seconds / 60)} min, ${p.compression})`)));
    polSel.addEventListener("change", () => { newPolicy.hidden = !!polSel.value; });
    const err = h("p", { class: "error", role: "alert" });
    const form = h("form", { class: "stack", id: "add-host-form" },
      h("div", {}, h("label", { for: "host-name" }, "Name"), h("input", { type: "text", id: "host-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" })),
      h("div", {}, h("label", { for: "source-type" }, "Source type"), typeSel),
      srcBox,
      h("div", {}, h("label", { for: "host-target" }, "Target (repository)"),
        targets.length ? h("select", { id: "host-target" }, targets.map((t) => h("option", { value: t.name }, `${t.name} — ${t.url}`)))
          : h("p", { class: "error" }, "No target yet: an admin adds one under Settings → Targets.")),
      h("div", {}, h("label", { for: "host-policy" }, "Policy"), polSel), newPolicy,
      h("div", {}, h("label", { for: "host-pool" }, "Agent pool", h("span", { class: "hint" }, " — empty: the server runs its jobs")),
        h("input", { type: "text", id: "host-pool" })),
      err,
      h("div", { class: "row" }, h("button", { type: "submit", id: "add-host-submit" }, "Add host"),
        h("a", { href: "#/", class: "button secondary" }, "Cancel")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      err.textContent = "";
      const name = form.querySelector("#host-name").value.trim();
      act(form.querySelector("#add-host-submit"), async () => {
        let policy = polSel.value;
        if (!policy) {
          policy = name;
          await post("policies", {
            name, compression: form.querySelector("#new-compression").checked ? "zstd" : "none",
            rpo_seconds: Math.max(30, Math.round(Number(form.querySelector("#new-rpo").value || 60) * 60)),
          });
        }
        await post("hosts", {
          name, policy, target: form.querySelector("#host-target").value,
          source: readSource(typeSel.value, sources[typeSel.value].fields, form),
          pool: form.querySelector("#host-pool").value.trim() || null,
        });
        location.hash = `#/hosts/${encodeURIComponent(name)}`;
      }, `Host ${name} added`);
    });
    fill(st.root, h("h1", {}, "Add host"),
      h("p", { class: "hint" }, "VMs of a hypervisor or cloud are protected without an agent from the ",
        h("a", { href: "#/platforms" }, "Platforms"), " page."),
      h("section", { class: "card" }, form));
    drawSource();
    form.querySelector("#host-name").focus();
  },
};
