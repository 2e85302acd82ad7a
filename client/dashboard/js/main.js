// The dashboard app: sign-in, the exam list (exams.js), monitoring one exam (`?exam=ID`), the
// admin pages (`?page=users|audit|guests|nodes|webhooks`) and account activation
// (`#/activate?token=…`).

import { api, onUnauthorized } from "./api.js";
import { activationToken, startActivation } from "./activate.js";
import { showAudit } from "./admin-audit.js";
import { showGuests } from "./admin-guests.js";
import { showNodes } from "./admin-nodes.js";
import { showUsers } from "./admin-users.js";
import { showWebhooks } from "./admin-webhooks.js";
import { showExams } from "./exams.js";
import { obtainLogin, session, tokenStore } from "./auth.js";
import { listenKeys, setUpHelpDialog } from "/client/keys.js";
import { startMonitor } from "./monitor.js";
import { toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["view-login", "view-activate", "view-exams", "view-monitor", "view-users", "view-audit", "view-guests", "view-nodes", "view-webhooks"];

/** The admin pages and who sees them. */
const PAGES = {
  users: { view: "view-users", title: "Users", allowed: () => session.can("users.manage"), show: showUsers },
  audit: { view: "view-audit", title: "Audit log", allowed: () => session.can("audit.view"), show: showAudit },
  guests: {
    view: "view-guests",
    title: "Guest accounts",
    allowed: () => session.canAny("users.manage", "guests.reassign"),
    show: showGuests,
  },
  nodes: { view: "view-nodes", title: "Nodes", allowed: () => session.can("system.view"), show: showNodes },
  webhooks: { view: "view-webhooks", title: "Webhooks", allowed: () => session.can("webhooks.manage"), show: showWebhooks },
};

let stopView = null;
let signingIn = null;
let generation = 0;

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  const signedIn = !["view-login", "view-activate"].includes(view);
  $("crumbs").hidden = view !== "view-monitor";
  $("sign-out").hidden = !signedIn;
  $("whoami").hidden = !signedIn || !session.me;
  $("sections").hidden = !signedIn;
  const current = view.replace("view-", "");
  for (const a of document.querySelectorAll("#sections a[data-nav]")) {
    if (a.dataset.nav === current || (current === "monitor" && a.dataset.nav === "exams")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.view = current;
}

function stop() {
  if (stopView) {
    stopView();
    stopView = null;
  }
}

/** Name, role and the sections this user may open. */
function renderIdentity() {
  const me = session.me;
  if (!me) return;
  $("whoami-name").textContent = me.name;
  const role = me.roles?.length ? me.roles.join(", ") : session.mode === "token" ? "staff token" : me.kind;
  $("whoami-role").textContent = role;
  $("whoami").title = `${me.name} (${role})${me.groups?.length ? ` · groups: ${me.groups.join(", ")}` : ""}`;
  for (const [name, page] of Object.entries(PAGES)) {
    document.querySelector(`#sections a[data-nav="${name}"]`).hidden = !page.allowed();
  }
}

async function loadMe() {
  session.me = await api.me({ quiet: true });
  renderIdentity();
}

/** Signed in: the stored session (cookie or token) if the server takes it, else the form. */
async function ensureSignedIn(message) {
  if (!message && session.me) return;
  if (!message) {
    try {
      await loadMe();
      return;
    } catch (err) {
      if (err.status !== 401) {
        message = `Cannot check your sign-in: ${err.message}`;
      } else if (tokenStore.get()) {
        message = "Your staff token was not accepted. Sign in again.";
      }
    }
  }
  if (!signingIn) {
    stop();
    const mode = tokenStore.get() ? "token" : "password";
    if (message) tokenStore.clear();
    session.me = null;
    show("view-login");
    document.title = "Sign in · Proctor dashboard";
    signingIn = obtainLogin({
      message,
      mode,
      login: async (login, password) => {
        await api.login(login, password);
        await loadMe();
      },
      verify: async () => {
        await loadMe();
      },
    }).finally(() => {
      signingIn = null;
    });
  }
  return signingIn;
}

function examIdFromUrl() {
  return new URLSearchParams(location.search).get("exam");
}

function pageFromUrl() {
  return new URLSearchParams(location.search).get("page");
}

/**
 * A sign-in link (`/dashboard/#token=…`, printed by `realtime serve --dev` and `realtime demo`):
 * keep the token in this tab like a pasted one, and take it out of the address bar. The hash
 * never reaches the server, so the token is in no access log.
 */
function takeTokenFromLink() {
  const match = /^#token=([^&]+)/.exec(location.hash);
  if (!match) return;
  tokenStore.set(decodeURIComponent(match[1]));
  session.me = null;
  history.replaceState(null, "", location.pathname + location.search);
}

async function route() {
  const mine = ++generation;
  stop();
  takeTokenFromLink();
  const activation = activationToken();
  if (activation !== null) {
    show("view-activate");
    document.title = "Activate your account · Proctor dashboard";
    startActivation(activation);
    return;
  }
  await ensureSignedIn();
  if (mine !== generation) return;
  const examId = examIdFromUrl();
  const pageName = pageFromUrl();
  const page = PAGES[pageName];
  if (page) {
    if (!page.allowed()) {
      toast(`Your role does not allow the ${page.title.toLowerCase()} page.`, "warn");
      navigate("./");
      return;
    }
    show(page.view);
    document.title = `${page.title} · Proctor dashboard`;
    const stopPage = page.show(); // a page that refreshes itself returns how to stop it
    if (typeof stopPage === "function") stopView = stopPage;
  } else if (examId) {
    show("view-monitor");
    $("crumb-exam").textContent = examId;
    $("exam-title").textContent = examId;
    $("exam-meta").textContent = "";
    $("sync-info").textContent = "";
    stopView = startMonitor({
      examId,
      token: tokenStore.get(), // null with a login: /ws/proctor then uses the cookie
      onUnauthorized: (message) => {
        ensureSignedIn(message).then(route);
      },
    });
  } else {
    show("view-exams");
    document.title = "Exams · Proctor dashboard";
    showExams();
  }
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const link = e.target.closest("a[data-exam], a[data-monitor], #crumb-exams, #home-link, #sections a[data-nav]");
  if (!link || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
$("sign-out").addEventListener("click", async () => {
  stop();
  if (session.mode === "cookie") {
    // End the login on the server: the token is revoked and its sockets close.
    try {
      await api.logout();
    } catch (err) {
      if (err.status !== 401) toast(`Sign-out failed: ${err.message}`, "error");
    }
  }
  // A pasted token is only forgotten by this tab (scripts may share it).
  tokenStore.clear();
  session.me = null;
  if (location.search || location.hash) history.pushState(null, "", "./");
  ensureSignedIn("").then(route);
});
window.addEventListener("hashchange", route);
onUnauthorized((message) => {
  if (signingIn) return; // the sign-in form reports it
  ensureSignedIn(message || "Your session expired. Sign in again.").then(route);
});

// Keyboard shortcuts on every view ("?" for the list); the monitor adds the table's own.
const openHelp = setUpHelpDialog($("help-dialog"));
$("help-open").addEventListener("click", openHelp);
listenKeys({ "?": openHelp });

route();
