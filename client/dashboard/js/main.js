// The dashboard app: sign-in, the exam list (exams.js), monitoring one exam (`?exam=ID`), the
// admin pages (`?page=users|audit|guests|nodes|webhooks`) and account activation
// (`#/activate?token=…`).

import { api, onUnauthorized } from "./api.js";
import { activationToken, linkTitleKey, startActivation } from "./activate.js";
import { showAudit } from "./admin-audit.js";
import { showGuests } from "./admin-guests.js";
import { showNodes } from "./admin-nodes.js";
import { showUsers } from "./admin-users.js";
import { showWebhooks } from "./admin-webhooks.js";
import { showExams } from "./exams.js";
import { obtainLogin, session, tokenStore } from "./auth.js";
import { initI18n, languageSwitch, onLanguageChange, plain, t } from "/client/i18n.js";
import { listenKeys, setUpHelpDialog } from "/client/keys.js";
import { roleName } from "./format.js";
import { startMonitor } from "./monitor.js";
import { bindNotifyControls } from "./notify.js";
import { toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["view-login", "view-activate", "view-exams", "view-monitor", "view-users", "view-audit", "view-guests", "view-nodes", "view-webhooks"];

/** The admin pages and who sees them. */
const PAGES = {
  users: { view: "view-users", title: "dashboard.title.users", allowed: () => session.can("users.manage"), show: showUsers },
  audit: { view: "view-audit", title: "dashboard.title.audit", allowed: () => session.can("audit.view"), show: showAudit },
  guests: {
    view: "view-guests",
    title: "dashboard.title.guests",
    allowed: () => session.canAny("users.manage", "guests.reassign"),
    show: showGuests,
  },
  nodes: { view: "view-nodes", title: "dashboard.title.nodes", allowed: () => session.can("system.view"), show: showNodes },
  webhooks: { view: "view-webhooks", title: "dashboard.title.webhooks", allowed: () => session.can("webhooks.manage"), show: showWebhooks },
};

let stopView = null;
bindNotifyControls();
let signingIn = null;
let generation = 0;

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  const signedIn = !["view-login", "view-activate"].includes(view);
  $("crumbs").hidden = view !== "view-monitor";
  $("sign-out").hidden = !signedIn;
  $("whoami").hidden = !signedIn || !session.me;
  $("sections").hidden = !signedIn;
  $("notify-settings").hidden = view !== "view-monitor";
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
  const role = me.roles?.length ? me.roles.map(roleName).join(", ") : session.mode === "token" ? t("dashboard.top.staffToken") : me.kind;
  $("whoami-role").textContent = role;
  $("whoami").title = me.groups?.length
    ? t("dashboard.top.whoamiGroups", { name: me.name, role, groups: me.groups.join(", ") })
    : t("dashboard.top.whoami", { name: me.name, role });
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
        message = t("dashboard.login.cannotCheck", { error: err.message });
      } else if (tokenStore.get()) {
        message = t("dashboard.login.tokenRefused");
      }
    }
  }
  if (!signingIn) {
    stop();
    const mode = tokenStore.get() ? "token" : "password";
    if (message) tokenStore.clear();
    session.me = null;
    show("view-login");
    setTitle("dashboard.title.signIn");
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
    setTitle(linkTitleKey());
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
      toast(t("dashboard.top.notAllowed", { page: t(page.title) }), "warn");
      navigate("./");
      return;
    }
    show(page.view);
    setTitle(page.title);
    const stopPage = page.show(); // a page that refreshes itself returns how to stop it
    if (typeof stopPage === "function") stopView = stopPage;
  } else if (examId) {
    show("view-monitor");
    $("crumb-exam").textContent = examId;
    plain($("exam-title"), examId);
    plain($("exam-meta"), "");
    plain($("sync-info"), "");
    stopView = startMonitor({
      examId,
      token: tokenStore.get(), // null with a login: /ws/proctor then uses the cookie
      onUnauthorized: (message) => {
        ensureSignedIn(message).then(route);
      },
    });
  } else {
    show("view-exams");
    setTitle("dashboard.title.exams");
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
      if (err.status !== 401) toast(t("dashboard.top.signOutFailed", { error: err.message }), "error");
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
  ensureSignedIn(message || t("dashboard.login.expired")).then(route);
});

// Keyboard shortcuts on every view ("?" for the list); the monitor adds the table's own.
const openHelp = setUpHelpDialog($("help-dialog"));
$("help-open").addEventListener("click", openHelp);
listenKeys({ "?": openHelp });

/** The tab's title: a page's name (a catalogue key) and the dashboard's. */
let titleKey = null;
function setTitle(key) {
  titleKey = key;
  document.title = `${t(key)} · ${t("dashboard.top.proctorDashboard")}`;
}

await initI18n();
languageSwitch($("language"));
onLanguageChange(() => {
  if (titleKey) setTitle(titleKey);
  renderIdentity();
  // Lists are drawn from data: load them again in the new language (the monitor redraws its
  // own; sign-in and activation keep what is typed and follow through their keys).
  if (["exams", ...Object.keys(PAGES)].includes(document.body.dataset.view)) route();
});
route();
