// Every host at a glance: RPO age against target, last sync and drill, traffic, charts, alerts.
import { get, post } from "../js/api.js";
import { act, badge, bytes, cell, duration, fill, h, progress, rate, table, when } from "../js/dom.js";
import { lineChart } from "../js/chart.js";
import { ageVsRpo, bytesPair, drillVerdict, hostLink, jobResult } from "./common.js";

const ORDER = { breached: 0, unprotected: 1, warning: 2, ok: 3, disabled: 4 };

export const dashboardView = {
  async enter(st) {
    st.title = "Dashboard";
    st.filter = { text: "", state: "" };
    const operate = st.session.can("operator");
    st.parts = {
      counts: h("div", { class: "cards", id: "counts" }),
      charts: h("div", { class: "grid2", id: "charts" }),
      hosts: h("div", { id: "hosts" }),
      alerts: h("div", { id: "alerts" }),
    };
    const search = h("input", { type: "text", id: "host-filter", placeholder: "name contains…" });
    search.addEventListener("input", () => { st.filter.text = search.value.toLowerCase(); drawHosts(st); });
    const state = h("select", { id: "state-filter" }, h("option", { value: "" }, "all"),
      Object.keys(ORDER).map((k) => h("option", { value: k }, k)));
    state.addEventListener("change", () => { st.filter.state = state.value; drawHosts(st); });
    fill(st.root,
      h("div", { class: "row" }, h("h1", { style: "margin-right:auto" }, "Dashboard"),
        operate ? h("a", { class: "button", href: "#/hosts/new", id: "add-host" }, "Add host") : null),
      st.parts.counts, st.parts.charts,
      h("section", { class: "card", "aria-labelledby": "hosts-title" },
        h("h2", { id: "hosts-title" }, "Hosts"),
        h("div", { class: "row" },
          h("label", { for: "host-filter" }, "Filter"), h("span", { style: "flex:1;min-width:10em" }, search),
          h("label", { for: "state-filter" }, "State"), state),
        st.parts.hosts),
      h("section", { class: "card", "aria-labelledby": "alerts-title" },
        h("h2", { id: "alerts-title" }, "Open alerts"), st.parts.alerts));
    await this.refresh(st);
  },

  async refresh(st) {
    st.data = await get("/api/v1/console/dashboard");
    const c = st.data.counts;
    const running = Object.entries(c.jobs).reduce((n, [k, v]) => n + (k === "paused" ? 0 : v), 0);
    const stat = (n, l, id) => h("div", { class: "stat", id }, h("span", { class: "n" }, n), h("span", { class: "l" }, l));
    fill(st.parts.counts,
      stat(c.hosts, "hosts", "count-hosts"), stat(c.ok + c.warning, "within RPO", "count-ok"),
      stat(c.breached, "RPO breached", "count-breached"), stat(c.unprotected, "no restore point", "count-unprotected"),
      stat(running, "active jobs", "count-jobs"), stat(c.open_alerts, "open alerts", "count-alerts"),
      stat(bytes(c.stored_bytes), "stored", "count-stored"));
    drawCharts(st);
    drawHosts(st);
    drawAlerts(st);
  },
};

function drawCharts(st) {
  const hist = st.data.history;
  const rpos = st.data.hosts.map((r) => r.status.rpo_seconds).filter((x) => x);
  const lastMax = [...hist.rpo_max].reverse().find((v) => v !== null);
  const rpo = lineChart({
    title: "Restore-point age (RPO lag)",
    t: hist.t,
    series: [{ name: "worst host", color: "#b3261e", values: hist.rpo_max },
      { name: "median host", color: "#1f4e79", values: hist.rpo_median }],
    hline: rpos.length ? { name: "tightest RPO target", color: "#17703a", value: Math.min(...rpos) } : null,
    format: (v) => duration(v),
    summary: lastMax !== undefined ? `Worst host now ${duration(lastMax)} behind.` : "No restore points yet.",
  });
  const total = hist.read_rate.reduce((a, b) => a + b, 0) * hist.step_seconds;
  const tput = lineChart({
    title: "Throughput",
    t: hist.t,
    series: [{ name: "read", color: "#1f4e79", values: hist.read_rate },
      { name: "stored (sent)", color: "#d97706", values: hist.stored_rate }],
    format: (v) => rate(v),
    summary: `${bytes(total)} read in the period shown.`,
  });
  fill(st.parts.charts,
    h("section", { class: "card", "aria-labelledby": "chart-rpo" }, h("h2", { id: "chart-rpo" }, "RPO lag over time"), rpo),
    h("section", { class: "card", "aria-labelledby": "chart-tput" }, h("h2", { id: "chart-tput" }, "Throughput over time"), tput));
}

function drawHosts(st) {
  const f = st.filter;
  const rows = st.data.hosts
    .filter((r) => (!f.text || r.name.toLowerCase().includes(f.text)) && (!f.state || r.status.protection === f.state))
    .sort((a, b) => (ORDER[a.status.protection] - ORDER[b.status.protection]) || a.name.localeCompare(b.name));
  const shown = rows.slice(0, 2000);
  const trs = shown.map((r) => {
    const s = r.status;
    return h("tr", { dataset: { host: r.name } },
      cell("Host", hostLink(r.name)),
      cell("State", badge(s.protection)),
      cell("Restore-point age / RPO", ageVsRpo(s)),
      cell("Last sync", s.active_job ? progress({ ...s.active_job }) : jobResult(s.last_sync)),
      cell("Last drill", drillVerdict(s.last_drill)),
      cell("Traffic", bytesPair(s.read_bytes, s.stored_bytes)),
      cell("Points", s.points, true),
      cell("Alerts", s.open_alerts ? badge(String(s.open_alerts), "breached") : "0", true));
  });
  fill(st.parts.hosts, table([
    { label: "Host" }, { label: "State" }, { label: "Restore-point age / RPO" }, { label: "Last sync" },
    { label: "Last drill" }, { label: "Traffic" }, { label: "Points", num: true }, { label: "Alerts", num: true },
  ], trs, { empty: "No hosts yet.", caption: "Protected hosts", attrs: { id: "hosts-table" } }),
  rows.length > shown.length ? h("p", { class: "muted" }, `${rows.length - shown.length} more: filter to see them.`) : null);
}

function drawAlerts(st) {
  const operate = st.session.can("operator");
  const trs = st.data.alerts.map((a) => h("tr", {},
    cell("Severity", badge(a.severity)), cell("Kind", a.kind),
    cell("Host", a.host ? hostLink(a.host) : "—"), cell("Message", a.message),
    cell("Opened", when(a.opened)),
    cell("Acknowledged", a.acknowledged_by || (operate ? (() => {
      const b = h("button", { type: "button", class: "secondary", "aria-label": `Acknowledge alert ${a.id}`,
        onclick: () => act(b, () => post(`alerts/${a.id}/ack`), "Alert acknowledged") }, "Acknowledge");
      return b;
    })() : "no"))));
  fill(st.parts.alerts, table([{ label: "Severity" }, { label: "Kind" }, { label: "Host" },
    { label: "Message" }, { label: "Opened" }, { label: "Acknowledged" }], trs,
  { empty: "No open alerts.", caption: "Open alerts", attrs: { id: "alerts-table" } }));
}
