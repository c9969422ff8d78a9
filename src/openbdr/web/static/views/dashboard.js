// Every host at a glance: RPO age against target, last sync and drill, traffic, charts, alerts.
import { get, post } from "../js/api.js";
import { act, applyWidths, badge, bytes, cell, duration, fill, h, html, progressHtml, rate, table, when } from "../js/dom.js";
import { lineChart } from "../js/chart.js";
import { ageVsRpo, bytesPair, drillVerdict, hostLink, jobResult } from "./common.js";

const STATES = ["breached", "unprotected", "warning", "ok", "disabled"];

const DATA = "/api/v1/console/dashboard";

export const dashboardView = {
  prefetch() { return get(DATA); },

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
      STATES.map((k) => h("option", { value: k }, k)));
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
    await this.refresh(st, st.early);
  },

  async refresh(st, pending = null) {
    st.data = await (pending || get(DATA));
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
  const rpos = st.data.hosts.map((r) => r.rpo_seconds).filter((x) => x);
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

// 1,000 rows and more. The rows are one string that the browser parses in one go, in
// tables of CHUNK rows with the same fixed columns: a chunk off screen is left out of
// style, layout and paint (content-visibility) until scrolled to, yet every row is in
// the page (find in page, filters, screen readers). The server sends problem hosts
// first; filters keep that order.
const MAX_ROWS = 5000;
const CHUNK = 100;
const HOST_COLS = ["Host", "State", "Restore-point age / RPO", "Last sync", "Last drill",
  "Newest copy (second site)", "Traffic", "Points", "Alerts"];

function hostRow(r) {
  const td = (i, content, num = false) => html`<td data-label="${HOST_COLS[i]}"${num ? html` class="num"` : ""}>${content}</td>`;
  return html`<tr data-host="${r.name}">${td(0, hostLink(r.name))}${td(1, badge(r.protection))}\
${td(2, ageVsRpo(r.age_seconds, r.rpo_seconds))}\
${td(3, r.active_job ? progressHtml(r.active_job) : jobResult(r.last_sync))}\
${td(4, drillVerdict(r.last_drill))}\
${td(5, r.copy_age_seconds === null || r.copy_age_seconds === undefined ? "—" : `${duration(r.copy_age_seconds)} old`)}\
${td(6, bytesPair(r.read_bytes, r.stored_bytes))}\
${td(7, r.points, true)}${td(8, r.open_alerts ? badge(String(r.open_alerts), "breached") : "0", true)}</tr>`;
}

function hostTable(rows, first, empty) {
  const head = HOST_COLS.map((c, i) => html`<th scope="col"${i >= 7 ? html` class="num"` : ""}>${c}</th>`);
  const cols = HOST_COLS.map((_, i) => html`<col class="c${i}">`);
  return html`<table class="responsive hosts">${first ? html`<caption class="sr-only">Protected hosts</caption>` : ""}\
<colgroup>${cols}</colgroup><thead${first ? "" : html` class="sr-only"`}><tr>${head}</tr></thead>\
<tbody>${rows.length ? rows.map(hostRow) : html`<tr><td colspan="${HOST_COLS.length}" class="muted">${empty}</td></tr>`}</tbody></table>`;
}

function drawHosts(st) {
  const f = st.filter;
  const rows = st.data.hosts
    .filter((r) => (!f.text || r.name.toLowerCase().includes(f.text)) && (!f.state || r.protection === f.state));
  const shown = rows.slice(0, MAX_ROWS);
  const chunks = [];
  for (let i = 0; i < shown.length || i === 0; i += CHUNK) {
    const table = hostTable(shown.slice(i, i + CHUNK), i === 0, st.data.hosts.length ? "No host matches." : "No hosts yet.");
    chunks.push(i === 0 ? table : html`<div class="host-chunk">${table}</div>`);
  }
  st.parts.hosts.innerHTML = html`<div id="hosts-table">${chunks}</div>\
${rows.length > shown.length ? html`<p class="muted">${rows.length - shown.length} more: filter to see them.</p>` : ""}`.text;
  applyWidths(st.parts.hosts);
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
