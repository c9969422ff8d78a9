// The console's shell: sign-in, hash routes, role-aware views and the live feed.
import { get, setUnauthorizedHandler, token } from "./js/api.js";
import { announce, fill, h, setProgress, showError } from "./js/dom.js";
import { connect, disconnect } from "./js/events.js";
import { addHostView } from "./views/addhost.js";
import { dashboardView } from "./views/dashboard.js";
import { drillsView, reportView } from "./views/drills.js";
import { hostView } from "./views/host.js";
import { loginView } from "./views/login.js";
import { platformView, platformsView } from "./views/platforms.js";
import { settingsView } from "./views/settings.js";

const RANK = { viewer: 1, operator: 2, admin: 3 };
export const session = {
  me: null,
  kinds: { jobs: {}, sources: {}, platforms: {} },
  can(role) { return !!this.me && (RANK[this.me.role] || 0) >= RANK[role]; },
};

const ROUTES = [
  [/^\/?$/, "dashboard", () => dashboardView],
  [/^\/hosts\/new$/, "dashboard", () => addHostView],
  [/^\/hosts\/([^/]+)$/, "dashboard", () => hostView],
  [/^\/platforms$/, "platforms", () => platformsView],
  [/^\/platforms\/([^/]+)$/, "platforms", () => platformView],
  [/^\/drills$/, "drills", () => drillsView],
  [/^\/drills\/([^/]+)\/([^/]+)$/, "drills", () => reportView],
  [/^\/settings(?:\/([a-z-]+))?$/, "settings", () => settingsView],
];

let current = null; // {view, params, state}
let refreshTimer = null;
const main = () => document.getElementById("main");

function routeOf(hash) {
  const path = decodeURIComponent(hash.replace(/^#/, "")) || "/";
  for (const [re, nav, view] of ROUTES) {
    const m = path.match(re);
    if (m) return { nav, view: view(), params: m.slice(1) };
  }
  return null;
}

// `early`: data the route's view asked for while the session was still being read.
async function render(early = null) {
  if (!session.me) { showLogin(); return; }
  const r = routeOf(location.hash);
  if (current && current.view.leave) current.view.leave(current.state);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (r && a.dataset.nav === r.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!r) {
    fill(main(), h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the dashboard")));
    current = null;
    return;
  }
  const root = fill(main(), h("p", { class: "muted" }, "Loading…"));
  const state = { root, params: r.params, session, early: early && early.view === r.view ? early.data : null };
  current = { view: r.view, state };
  try {
    await r.view.enter(state);
    document.title = `${state.title || "OpenBDR"} · OpenBDR console`;
    main().focus({ preventScroll: true });
  } catch (err) {
    fill(root, h("h1", {}, "Cannot show this page"), h("p", { class: "error" }, err.message),
      err.hint ? h("p", {}, err.hint) : null);
  }
}

// The catalog changed somewhere: the current page re-reads its data (debounced). The
// first version after signing in only sets the baseline: the page was just read.
let lastVersion = null;
function onCatalog({ version }) {
  const changed = lastVersion !== null && version !== lastVersion;
  lastVersion = version;
  if (changed) refreshSoon();
}

// A busy catalog changes every second. A page is read again at most once per four times
// its last refresh took (and 1 s), so a dashboard of 1,000 hosts does not spend its
// time reloading.
let refreshAfter = 0;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    if (!current || !current.view.refresh) return;
    const started = Date.now();
    try { await current.view.refresh(current.state); } catch (err) { showError(err); }
    refreshAfter = Date.now() + Math.max(1000, 4 * (Date.now() - started));
  }, Math.max(250, refreshAfter - Date.now()));
}

const lastStates = new Map();
function onJobs(jobs) {
  const seen = new Set();
  for (const job of jobs) {
    seen.add(job.id);
    for (const el of document.querySelectorAll(`.job-progress[data-job="${job.id}"]`)) setProgress(el, job);
    const was = lastStates.get(job.id);
    if (was && was !== job.state) announce(`${job.kind} job ${job.id} of ${job.host || "the server"} is ${job.state}`);
    lastStates.set(job.id, job.state);
  }
  for (const [id] of lastStates) if (!seen.has(id)) lastStates.delete(id);
  if (current && current.view.onJobs) current.view.onJobs(current.state, jobs);
}

function setLive(up) {
  const dot = document.getElementById("live-dot");
  dot.hidden = false;
  dot.classList.toggle("down", !up);
  dot.title = up ? "live updates: connected" : "live updates: reconnecting";
}

async function startSession() {
  [session.me, session.kinds] = await Promise.all([get("me"), get("kinds")]);
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `${session.me.name} (${session.me.role})`;
  lastVersion = null;
  connect({ onJobs, onCatalog, onState: setLive });
}

// The first page's data is requested together with the session (one round trip less).
export function signedIn() {
  const r = routeOf(location.hash);
  let early = null;
  if (r && r.view.prefetch) {
    early = { view: r.view, data: r.view.prefetch(r.params) };
    early.data.catch(() => {}); // the view reports a failure when it awaits it
  }
  startSession().then(() => render(early), (err) => { showError(err); signOut(); });
}

function showLogin() {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("live-dot").hidden = true;
  current = null;
  loginView(main(), signedIn);
}

export function signOut() {
  disconnect();
  token.clear();
  session.me = null;
  showLogin();
}

setUnauthorizedHandler(() => { if (session.me) signOut(); });
document.getElementById("logout").addEventListener("click", signOut);
window.addEventListener("hashchange", () => render());
if (token.get()) signedIn(); else showLogin();
