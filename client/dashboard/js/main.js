// The dashboard app: sign-in, the exam list, and monitoring one exam (`?exam=ID`).

import { api, onUnauthorized } from "./api.js";
import { obtainToken, tokenStore } from "./auth.js";
import { esc, plural } from "./format.js";
import { startMonitor } from "./monitor.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["view-login", "view-exams", "view-monitor"];

let stopMonitor = null;
let signingIn = null;
let generation = 0;

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("crumbs").hidden = view !== "view-monitor";
  $("sign-out").hidden = view === "view-login";
  document.body.dataset.view = view.replace("view-", "");
}

function stop() {
  if (stopMonitor) {
    stopMonitor();
    stopMonitor = null;
  }
}

/** A token the server accepts: the stored one, or one from the sign-in view. */
function ensureToken(message) {
  if (!message && tokenStore.get()) return Promise.resolve(tokenStore.get());
  if (!signingIn) {
    stop();
    if (message) tokenStore.clear();
    show("view-login");
    document.title = "Sign in · Proctor dashboard";
    signingIn = obtainToken({
      message,
      verify: async () => {
        await api.listExams();
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

async function route() {
  const mine = ++generation;
  stop();
  const token = await ensureToken();
  if (mine !== generation) return;
  const examId = examIdFromUrl();
  if (examId) {
    show("view-monitor");
    $("crumb-exam").textContent = examId;
    $("exam-title").textContent = examId;
    $("exam-meta").textContent = "";
    $("sync-info").textContent = "";
    stopMonitor = startMonitor({
      examId,
      token,
      onUnauthorized: (message) => {
        ensureToken(message).then(route);
      },
    });
  } else {
    show("view-exams");
    document.title = "Exams · Proctor dashboard";
    await loadExams(mine);
  }
}

async function loadExams(mine) {
  const status = $("exams-status");
  const list = $("exam-list");
  status.textContent = "Loading exams…";
  let exams;
  try {
    ({ exams } = await api.listExams());
  } catch (err) {
    if (mine === generation && err.status !== 401) status.textContent = `Could not load the exams: ${err.message}`;
    return;
  }
  if (mine !== generation) return;
  exams.sort((a, b) => (b.starts_at ?? 0) - (a.starts_at ?? 0) || a.title.localeCompare(b.title));
  status.textContent = exams.length ? plural(exams.length, "exam") : "No exams yet.";
  list.innerHTML = exams
    .map((e) => {
      const meta = [e.id, `${e.duration_minutes} min`];
      if (e.groups?.length) meta.push(`groups: ${e.groups.join(", ")}`);
      if (e.starts_at) meta.push(`starts ${new Date(e.starts_at * 1000).toLocaleString()}`);
      const flags = [];
      if (e.settings?.lock_sessions) flags.push(`<span class="flag">Locks on open</span>`);
      if (e.settings?.requires_authorization) flags.push(`<span class="flag">Authorization</span>`);
      return `<li class="exam-item"><a href="?exam=${encodeURIComponent(e.id)}" data-exam="${esc(e.id)}">
          <span class="exam-name">${esc(e.title)}</span>
          <span class="exam-meta muted">${esc(meta.join(" · "))}</span>
          <span class="flags">${flags.join("")}</span>
          <span class="go" aria-hidden="true">Monitor →</span></a></li>`;
    })
    .join("");
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const link = e.target.closest("a[data-exam], #crumb-exams, #home-link");
  if (!link || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
$("reload-exams").addEventListener("click", () => loadExams(generation));
$("sign-out").addEventListener("click", () => {
  stop();
  tokenStore.clear();
  ensureToken().then(route);
});
onUnauthorized((message) => {
  if (signingIn) return; // the sign-in form reports it
  ensureToken(message || "Your session expired. Sign in again.").then(route);
});

route();
