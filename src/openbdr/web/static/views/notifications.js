// Settings → Notifications: the protection report (everyone), channels with their routing,
// the test button and the last deliveries (operators see, admins change).
import { del, download, get, patch, post } from "../js/api.js";
import { act, badge, cell, confirmAction, fill, h, table, when } from "../js/dom.js";

const STATE = { delivered: "ok", pending: "warning", failed: "failed", expired: "failed" };

function reportCard() {
  const html = h("button", { type: "button", id: "report-html", onclick: () =>
    act(html, () => download("/api/v1/reports/protection?format=html", "openbdr-protection-report.html"), "Report downloaded") },
  "Download protection report (HTML)");
  const json = h("button", { type: "button", class: "secondary", onclick: () =>
    act(json, () => download("/api/v1/reports/protection?format=json", "openbdr-protection-report.json"), "Report downloaded") },
  "Download JSON");
  return h("section", { class: "card" }, h("h2", {}, "Protection report"),
    h("p", {}, "What is protected, whether each host meets its RPO target, its newest point's age, drill-verified points, failed jobs and open alerts. Channels with a report schedule receive it by mail (HTML) or as JSON."),
    h("div", { class: "actions" }, html, json));
}

function where(c) {
  return c.type === "email" ? `${(c.config.to || []).join(", ")} via ${c.config.host}:${c.config.port}` : c.config.url;
}

function routing(c) {
  return `${c.kinds.length ? c.kinds.join(", ") : "every kind"}, ≥ ${c.min_severity}${c.resolved ? ", resolved notices" : ""}${c.report ? `, ${c.report} report` : ""}`;
}

export async function notifications(st) {
  const parts = [reportCard()];
  if (!st.session.can("operator")) { fill(st.body, parts); return; }
  const admin = st.session.can("admin");
  const [channels, deliveries, kinds] = await Promise.all([get("notify/channels"), get("notify/deliveries?limit=30"), get("notify/kinds")]);
  // the last test's outcome stays on screen across re-renders
  const result = h("div", { id: "notify-result", role: "status" },
    st.lastTest ? h("p", { class: st.lastTest.ok ? "ok" : "error" }, st.lastTest.text) : null);
  const trs = channels.map((c) => h("tr", {}, cell("Channel", c.name), cell("Type", c.type), cell("Where", h("code", {}, where(c))),
    cell("Routing", routing(c)), cell("Enabled", c.enabled ? "yes" : "no"), cell("Pending", String(c.pending)),
    cell("Last delivery", c.last_delivery ? h("span", {}, badge(c.last_delivery.state, STATE[c.last_delivery.state]), " ", when(c.last_delivery.created)) : "never"),
    admin ? cell("Actions", h("div", { class: "actions" },
      (() => { const b = h("button", { type: "button", class: "secondary", "aria-label": `Test channel ${c.name}`, onclick: () => act(b, async () => {
        const t = await post(`notify/channels/${encodeURIComponent(c.name)}/test`);
        st.lastTest = { ok: t.ok, text: `${c.name}: ${t.message}` };
        await notifications(st);
      }) }, "Send test"); return b; })(),
      (() => { const b = h("button", { type: "button", class: "secondary", onclick: () => act(b, async () => {
        await patch(`notify/channels/${encodeURIComponent(c.name)}`, { enabled: !c.enabled });
        await notifications(st);
      }, `Channel ${c.name} ${c.enabled ? "disabled" : "enabled"}`) }, c.enabled ? "Disable" : "Enable"); return b; })(),
      (() => { const b = h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction(`Remove channel ${c.name}? Its pending messages are dropped.`, "Remove"))) return;
        await act(b, async () => { await del(`notify/channels/${encodeURIComponent(c.name)}`); await notifications(st); }, `Channel ${c.name} removed`);
      } }, "Remove"); return b; })())) : null));
  parts.push(h("section", { class: "card" }, h("h2", {}, "Notification channels"),
    table([{ label: "Channel" }, { label: "Type" }, { label: "Where" }, { label: "Routing" }, { label: "Enabled" }, { label: "Pending" }, { label: "Last delivery" }, ...(admin ? [{ label: "Actions" }] : [])],
      trs, { empty: "No channel yet: alerts show only here.", caption: "Notification channels", attrs: { id: "channels-table" } }), result));
  if (admin) parts.push(addForm(st, kinds));
  const dtrs = deliveries.map((d) => h("tr", {}, cell("When", when(d.created)), cell("Channel", d.channel), cell("Event", d.event),
    cell("Message", d.summary), cell("State", badge(d.state, STATE[d.state])), cell("Attempts", String(d.attempts), true),
    cell("Last error", d.last_error || "—")));
  parts.push(h("section", { class: "card" }, h("h2", {}, "Last deliveries"),
    table([{ label: "When" }, { label: "Channel" }, { label: "Event" }, { label: "Message" }, { label: "State" }, { label: "Attempts", num: true }, { label: "Last error" }],
      dtrs, { empty: "Nothing sent yet.", caption: "Last deliveries", attrs: { id: "deliveries-table" } })));
  fill(st.body, parts);
}

function field(id, label, input, hint) {
  return h("div", { "data-for": id }, h("label", { for: id }, label, hint ? h("span", { class: "hint" }, ` — ${hint}`) : null), input);
}

function addForm(st, kinds) {
  const out = h("div", { id: "channel-secret-out" });
  const type = h("select", { id: "n-type" }, kinds.types.map((t) => h("option", { value: t }, t)));
  const kindBoxes = Object.entries(kinds.kinds).map(([k, d]) => h("label", { class: "check", title: d },
    h("input", { type: "checkbox", name: "n-kind", value: k }), k));
  const form = h("form", { class: "stack", id: "add-channel-form" },
    field("n-name", "Name", h("input", { type: "text", id: "n-name", required: true })),
    field("n-type", "Type", type),
    field("n-url", "URL", h("input", { type: "text", inputmode: "url", id: "n-url" }), "webhook or chat (Slack-compatible incoming webhook)"),
    field("n-secret", "Webhook secret", h("input", { type: "password", id: "n-secret", autocomplete: "new-password", minlength: 16 }), "empty: generated and shown once"),
    field("n-host", "SMTP server", h("input", { type: "text", id: "n-host" })),
    field("n-port", "SMTP port", h("input", { type: "number", id: "n-port", value: 587, min: 1, max: 65535 })),
    field("n-security", "Security", h("select", { id: "n-security" }, ["starttls", "tls", "none"].map((s) => h("option", { value: s }, s)))),
    field("n-user", "SMTP user", h("input", { type: "text", id: "n-user", autocomplete: "off" }), "optional"),
    field("n-pass", "SMTP password", h("input", { type: "password", id: "n-pass", autocomplete: "new-password" }), "sealed on the server"),
    field("n-from", "From", h("input", { type: "email", id: "n-from" })),
    field("n-to", "To", h("input", { type: "text", id: "n-to" }), "addresses, comma-separated"),
    h("fieldset", {}, h("legend", {}, "Alert kinds (none ticked: every kind)"), kindBoxes),
    field("n-sev", "Minimum severity", h("select", { id: "n-sev" }, kinds.severities.map((s) => h("option", { value: s, selected: s === "warning" }, s)))),
    h("label", { class: "check" }, h("input", { type: "checkbox", id: "n-resolved", checked: true }), "Also send resolved notices"),
    field("n-report", "Protection report", h("select", { id: "n-report" }, [["", "none"], ["daily", "daily"], ["weekly", "weekly"]].map(([v, l]) => h("option", { value: v }, l)))),
    h("div", {}, h("button", { type: "submit" }, "Add channel")));
  form.addEventListener("input", () => { form.dataset.dirty = "1"; });
  const show = () => {
    const t = type.value;
    for (const id of ["n-url"]) form.querySelector(`[data-for=${id}]`).hidden = t === "email";
    form.querySelector("[data-for=n-secret]").hidden = t !== "webhook";
    for (const id of ["n-host", "n-port", "n-security", "n-user", "n-pass", "n-from", "n-to"]) form.querySelector(`[data-for=${id}]`).hidden = t !== "email";
  };
  type.addEventListener("change", show);
  show();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = (id) => form.querySelector(`#${id}`).value.trim();
    const t = type.value;
    const body = { name: v("n-name"), type: t, kinds: [...form.querySelectorAll("input[name=n-kind]:checked")].map((i) => i.value),
      min_severity: v("n-sev"), resolved: form.querySelector("#n-resolved").checked, report: v("n-report") || null };
    if (t === "email") Object.assign(body, { smtp_host: v("n-host"), smtp_port: Number(v("n-port") || 587), security: v("n-security"),
      username: v("n-user") || null, password: form.querySelector("#n-pass").value || null, sender: v("n-from"),
      recipients: v("n-to").split(",").map((a) => a.trim()).filter(Boolean) });
    else Object.assign(body, { url: v("n-url"), secret: t === "webhook" ? (form.querySelector("#n-secret").value || null) : null });
    act(form.querySelector("button[type=submit]"), async () => {
      const c = await post("notify/channels", body);
      form.dataset.dirty = "0";
      await notifications(st);
      if (c.secret) {
        fill(st.body.querySelector("#channel-secret-out"), h("div", { class: "card", role: "status" }, h("p", {}, `Webhook secret of ${c.name} (the receiver checks X-OpenBDR-Signature with it):`),
          h("p", { class: "secret", tabindex: 0 }, c.secret), h("p", { class: "hint" }, "Shown once: copy it now.")));
      }
    }, "Channel added");
  });
  return h("section", { class: "card" }, h("h2", {}, "Add a channel"), form, out);
}
