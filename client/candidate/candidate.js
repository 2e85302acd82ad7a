// The candidate page: a placeholder exam around CandidateConnection.
//
// An exam-delivery system embeds `CandidateConnection` the same way: open with the access code
// (or a candidate's login token plus the exam id), show the session's status (waiting, running,
// paused), react to staff commands, report progress and focus loss, and submit.
//
// Three ways in: an access code; "Sign in" (candidate login → login token → open with the token
// and the exam id, `?exam=` or typed); and, when `GET /api/v1/guests/offer` lists a live exam
// for this computer, a guest account (reserve → the account and password shown once → log in
// with them → open).

import { errorText, formatTime, initI18n, languageSwitch, localize, onLanguageChange, plain, t } from "/client/i18n.js";
import { listenKeys, setUpHelpDialog } from "/client/keys.js";
import { CandidateConnection, State } from "/client/realtime.js";

await initI18n(); // the catalogues first, so that no English flashes up

const $ = (id) => document.getElementById(id);

// Inline icons (no emoji: kiosks and CI machines often have no emoji font).
const svg = (body) =>
  `<svg viewBox="0 0 24 24" width="28" height="28" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round">${body}</svg>`;
const ICONS = {
  lock: svg('<rect x="4.5" y="10.5" width="15" height="10" rx="2"/><path d="M8 10.5V7.5a4 4 0 0 1 8 0v3"/>'),
  clock: svg('<circle cx="12" cy="12" r="8.5"/><path d="M12 7.5V12l3 2"/>'),
  mail: svg('<rect x="3.5" y="5.5" width="17" height="13" rx="2"/><path d="m4 7 8 6 8-6"/>'),
  plus: svg('<circle cx="12" cy="12" r="8.5"/><path d="M12 8v8M8 12h8"/>'),
  check: svg('<path d="m5 12.5 4.5 4.5L19 7.5"/>'),
  stop: svg('<rect x="7" y="7" width="10" height="10" rx="1.5" fill="currentColor"/>'),
  windows: svg('<rect x="3.5" y="7.5" width="12" height="10" rx="1.5"/><path d="M8.5 7.5V5.5a1.5 1.5 0 0 1 1.5-1.5h9a1.5 1.5 0 0 1 1.5 1.5v8a1.5 1.5 0 0 1-1.5 1.5h-3.5"/>'),
  alert: svg('<path d="M12 7v6"/><circle cx="12" cy="17" r="0.6" fill="currentColor"/>'),
  info: svg('<path d="M12 11v6"/><circle cx="12" cy="7.5" r="0.6" fill="currentColor"/>'),
  pause: svg('<path d="M9 7v10M15 7v10" stroke-width="3"/>'),
  hand: svg('<path d="M8 12V6.5a1.5 1.5 0 0 1 3 0V11M11 10V5a1.5 1.5 0 0 1 3 0v6M14 10V6.5a1.5 1.5 0 0 1 3 0V14a6 6 0 0 1-6 6h-.5a6 6 0 0 1-4.8-2.4L4 15.2a1.5 1.5 0 0 1 2.3-1.9L8 15"/>'),
};

function setIcon(el, name) {
  if (el.dataset.icon !== name || !el.firstChild) {
    el.dataset.icon = name;
    el.innerHTML = ICONS[name] ?? ICONS.info;
  }
}
for (const el of document.querySelectorAll("[data-icon]")) setIcon(el, el.dataset.icon);
const CODE_KEY = "realtime.candidate.code";
const QUESTIONS = 20;
const LOGIN_KEY = "realtime.candidate.login"; // {token, examId} of a signed-in candidate (this tab)
const SCREENS = ["code", "signin", "guest", "guest-account", "connecting", "waiting", "exam", "final", "refused"];

/** Refusals the page explains (candidate.refusal.<reason>.title/.text in the catalogues). */
const KNOWN_REFUSALS = new Set(["locked", "already_open", "outside_window", "not_found"]);

let conn = null;
let answers = new Map(); // question number -> choice
let position = 1;
let clockTimer = null;
let everOpened = false;
let focusReported = 0;
let announcedLow = new Set();
const messageQueue = [];

function storage() {
  try {
    return sessionStorage;
  } catch {
    return null;
  }
}

// -- screens and overlays ---------------------------------------------------------------------

function show(screen) {
  for (const name of SCREENS) $(`screen-${name}`).hidden = name !== screen;
  document.body.dataset.screen = screen;
  $("bar").hidden = !["waiting", "exam"].includes(screen);
  if (["final", "refused", "code", "signin", "guest", "guest-account"].includes(screen)) {
    hideOverlay("overlay-paused");
    $("reconnecting").hidden = true;
    syncInert();
  }
}

function syncInert() {
  const blocked = !$("overlay-paused").hidden || !$("overlay-message").hidden;
  $("main").inert = blocked;
  $("bar").inert = blocked;
  $("overlay-paused").inert = !$("overlay-message").hidden;
}

function showOverlay(id) {
  const el = $(id);
  if (!el.hidden) return;
  el.hidden = false;
  syncInert();
}

function hideOverlay(id) {
  $(id).hidden = true;
  syncInert();
}

function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  // A fresh text node so screen readers announce repeated messages too.
  requestAnimationFrame(() => {
    el.textContent = text;
  });
}

/** Lock notices, staff notices and time extensions: one at a time, acknowledged with OK. */
function pushMessage({ title, text, icon = "info", kind = "info" }) {
  messageQueue.push({ title, text, icon, kind });
  if ($("overlay-message").hidden) nextMessage();
}

function nextMessage() {
  const m = messageQueue.shift();
  if (!m) {
    hideOverlay("overlay-message");
    if (!$("overlay-paused").hidden) $("overlay-paused").focus();
    return;
  }
  $("message-title").textContent = m.title;
  $("message-text").textContent = m.text;
  setIcon($("message-icon"), m.icon);
  $("message-card").dataset.kind = m.kind;
  showOverlay("overlay-message");
  announce(`${m.title}. ${m.text}`);
  $("message-ok").focus();
}

$("message-ok").addEventListener("click", nextMessage);

// -- raise hand -------------------------------------------------------------------------------

/** The raise-hand button and its status: up until a proctor acknowledges it. */
function renderHand() {
  const s = conn?.session;
  const raised = !!s?.hand_raised;
  const button = $("raise-hand");
  button.setAttribute("aria-pressed", String(raised));
  button.disabled = raised;
  button.dataset.state = raised ? "raised" : "idle";
  $("raise-hand-text").textContent = t(raised ? "candidate.hand.raised" : "candidate.hand.raise");
  const status = $("hand-status");
  if (raised) {
    status.textContent = t("candidate.hand.waiting");
  } else if (s?.hand_acked_at) {
    status.textContent = t("candidate.hand.coming");
  }
  status.hidden = !raised && !s?.hand_acked_at;
  status.dataset.state = raised ? "raised" : "acked";
}

$("raise-hand").addEventListener("click", () => {
  if (!conn?.raiseHand()) announce(t("candidate.hand.offline"));
});

// -- starting ---------------------------------------------------------------------------------

function start({ code, token, examId }) {
  if (conn) conn.close();
  everOpened = false;
  if (code) storage()?.setItem(CODE_KEY, code);
  conn = new CandidateConnection({
    accessCode: code || undefined, token: token || undefined, examId: examId || undefined,
  });
  globalThis.__realtime = { connection: conn }; // debug/test hook
  loadAnswers();
  conn.addEventListener("state", onState);
  conn.addEventListener("opened", onOpened);
  conn.addEventListener("session", () => render());
  conn.addEventListener("command", onCommand);
  conn.addEventListener("hand_raised", () => {
    renderHand();
    announce(t("candidate.hand.announce"));
  });
  conn.addEventListener("refused", onRefused);
  conn.addEventListener("ended", onEnded);
  conn.addEventListener("error", (e) => console.warn("realtime:", e.detail.code, e.detail.message));
  localize($("connecting-text"), "candidate.connecting.opening");
  show("connecting");
  conn.connect();
}

function answersKey() {
  return `realtime.candidate.answers.${conn.accessCode ?? conn.examId ?? "token"}`;
}

function loadAnswers() {
  try {
    answers = new Map(JSON.parse(storage()?.getItem(answersKey()) ?? "[]"));
  } catch {
    answers = new Map();
  }
}

function saveAnswers() {
  storage()?.setItem(answersKey(), JSON.stringify([...answers]));
}

$("code-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const code = $("code-input").value.trim().toUpperCase();
  if (!code) {
    localize($("code-error"), "candidate.code.missing");
    $("code-error").hidden = false;
    $("code-input").focus();
    return;
  }
  $("code-error").hidden = true;
  start({ code });
});

$("retry").addEventListener("click", () => {
  localize($("connecting-text"), "candidate.connecting.opening");
  show("connecting");
  conn.connect();
});

$("change-code").addEventListener("click", () => {
  conn?.close();
  storage()?.removeItem(CODE_KEY);
  storage()?.removeItem(LOGIN_KEY);
  const url = new URL(location.href);
  url.searchParams.delete("code");
  url.searchParams.delete("token");
  history.replaceState(null, "", url);
  $("code-input").value = "";
  show("code");
  $("code-input").focus();
});

// -- connection events ------------------------------------------------------------------------

function onState(e) {
  const { state, retryAt } = e.detail;
  const net = $("net");
  net.dataset.state = state;
  localize($("net-text"), state === State.OPEN ? "candidate.net.open" : state === State.RECONNECTING ? "candidate.net.reconnecting" : "candidate.net.offline");
  if (state === State.RECONNECTING) {
    if (everOpened && !["final", "refused"].includes(document.body.dataset.screen)) {
      $("reconnecting").hidden = false;
      const left = retryAt ? Math.max(0, Math.round((retryAt - Date.now()) / 1000)) : 0;
      if (left > 1) localize($("reconnecting-text"), "candidate.reconnecting.textRetry", { count: left });
      else localize($("reconnecting-text"), "candidate.reconnecting.text");
    } else if (!everOpened) {
      localize($("connecting-text"), "candidate.connecting.unreachable");
    }
  } else {
    $("reconnecting").hidden = true;
  }
}

function onOpened(e) {
  const { session, exam, relocked, resumed } = e.detail;
  const first = !everOpened;
  everOpened = true;
  $("reconnecting").hidden = true;
  plain($("exam-title"), exam.title);
  updateTitle();
  $("candidate-name").textContent = session.candidate_name;
  if (first) {
    position = Math.min(Math.max(session.position || 1, 1), QUESTIONS);
    if (session.answered > answers.size) {
      // Answers given on another device/tab are not known here; keep the count honest.
      for (let q = 1; answers.size < session.answered && q <= QUESTIONS; q++) if (!answers.has(q)) answers.set(q, null);
    }
    buildQuestionList();
  }
  if (relocked && !resumed) {
    pushMessage({
      title: t("candidate.message.relockedTitle"),
      text: t("candidate.message.relockedText"),
      icon: "lock",
      kind: "lock",
    });
  }
  render();
  if (first && session.status === "active") sendProgress();
  startClock();
}

function onCommand(e) {
  const { action, details } = e.detail;
  switch (action) {
    case "lock":
      pushMessage({
        title: t("candidate.message.lockedTitle"),
        text: t("candidate.message.lockedText"),
        icon: "lock",
        kind: "lock",
      });
      break;
    case "notice":
      pushMessage({ title: t("candidate.message.notice"), text: details.text ?? "", icon: "mail", kind: "notice" });
      break;
    case "extend": {
      const minutes = details.minutes ?? 0;
      pushMessage({
        title: t("candidate.message.extendTitle"),
        text: t("candidate.message.extendText", { count: minutes }),
        icon: "plus",
        kind: "extend",
      });
      break;
    }
    case "reduce": {
      // The new end is in the command's session changes: the clock shows it at once.
      pushMessage({
        title: t("candidate.message.reduceTitle"),
        text: t("candidate.message.reduceText", { count: details.minutes ?? 0 }),
        icon: "clock",
        kind: "reduce",
      });
      break;
    }
    case "authorize":
      announce(t("candidate.announce.authorized"));
      break;
    case "resume":
      announce(t("candidate.announce.resumed"));
      break;
    case "acknowledge_hand":
      pushMessage({
        title: t("candidate.hand.ackTitle"),
        text: t("candidate.hand.ackText"),
        icon: "hand",
        kind: "hand",
      });
      break;
    default:
      break;
  }
  render();
}

function onRefused(e) {
  const { reason, message } = e.detail;
  if (reason === "closed") {
    showFinal("candidate.final.finished", "candidate.final.alreadyEnded", "check", "ended");
    return;
  }
  if (reason === "not_found" && !everOpened && conn?.token && conn.examId) {
    storage()?.removeItem(LOGIN_KEY);
    showSignIn(t("candidate.signin.notFound"));
    return;
  }
  if (reason === "not_found" && !everOpened) {
    storage()?.removeItem(CODE_KEY);
    show("code");
    localize($("code-error"), "candidate.refusal.not_found.text");
    $("code-error").hidden = false;
    $("code-input").focus();
    return;
  }
  if (KNOWN_REFUSALS.has(reason)) {
    localize($("refused-title"), `candidate.refusal.${reason}.title`);
    localize($("refused-text"), `candidate.refusal.${reason}.text`);
  } else {
    localize($("refused-title"), "candidate.refused.title");
    plain($("refused-text"), message);
  }
  localize($("refused-reason"), "candidate.refused.reason", { reason });
  $("screen-refused").dataset.reason = reason;
  show("refused");
  $("retry").focus();
}

function onEnded(e) {
  const { reason } = e.detail;
  if (reason === "terminated") {
    showFinal("candidate.final.terminatedTitle", "candidate.final.terminatedText", "stop", "terminated");
  } else if (reason === "completed") {
    showFinal("candidate.final.completedTitle", "candidate.final.completedText", "check", "completed");
  } else if (reason === "superseded") {
    showFinal("candidate.final.supersededTitle", "candidate.final.supersededText", "windows", "superseded");
  } else if (reason !== "refused") {
    showFinal("candidate.final.closedTitle", "candidate.final.closedText", "alert", "closed");
  }
}

/** The final screen; `titleKey` and `textKey` are catalogue keys. */
function showFinal(titleKey, textKey, icon, kind) {
  clearInterval(clockTimer);
  messageQueue.length = 0;
  hideOverlay("overlay-message");
  localize($("final-title"), titleKey);
  localize($("final-text"), textKey);
  const title = t(titleKey);
  const text = t(textKey);
  setIcon($("final-icon"), icon);
  $("final-card").dataset.kind = kind;
  $("screen-final").dataset.reason = kind;
  show("final");
  announce(`${title}. ${text}`);
}

// -- the exam ---------------------------------------------------------------------------------

function render() {
  const s = conn?.session;
  if (!s) return;
  const screen = document.body.dataset.screen;
  if (screen === "final" || screen === "refused") return;
  if (s.status === "awaiting" || s.status === "ready") show("waiting");
  else if (s.status === "active" || s.status === "paused") show("exam");
  if (s.status === "paused") {
    if ($("overlay-paused").hidden) {
      showOverlay("overlay-paused");
      announce(t("candidate.announce.paused"));
      if ($("overlay-message").hidden) $("overlay-paused").focus();
    }
  } else if (!$("overlay-paused").hidden) {
    hideOverlay("overlay-paused");
  }
  renderQuestion();
  renderClock();
  renderHand();
}

function buildQuestionList() {
  const list = $("question-list");
  list.replaceChildren();
  for (let q = 1; q <= QUESTIONS; q++) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(q);
    b.dataset.q = String(q);
    li.append(b);
    list.append(li);
  }
}

$("question-list").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-q]");
  if (b) goTo(Number(b.dataset.q));
});

const CHOICES = ["A", "B", "C", "D"];

function renderQuestion() {
  $("question-count").textContent = t("candidate.exam.questionOf", { n: position, total: QUESTIONS });
  $("question-title").textContent = t("candidate.exam.question", { n: position });
  $("question-text").textContent = t("candidate.exam.placeholder");
  const fieldset = $("choices");
  const current = answers.get(position);
  if (fieldset.dataset.q !== String(position) || fieldset.dataset.lang !== document.documentElement.lang) {
    fieldset.dataset.q = String(position);
    fieldset.dataset.lang = document.documentElement.lang;
    fieldset.querySelectorAll("label").forEach((l) => l.remove());
    for (const c of CHOICES) {
      const label = document.createElement("label");
      label.className = "choice";
      label.innerHTML = `<input type="radio" name="answer" value="${c}"><span class="letter">${c}</span><span></span>`;
      label.lastChild.textContent = t("candidate.exam.option", { letter: c });
      fieldset.append(label);
    }
  }
  for (const input of fieldset.querySelectorAll("input")) input.checked = input.value === current;
  $("prev").disabled = position <= 1;
  $("next").disabled = position >= QUESTIONS;
  for (const b of $("question-list").querySelectorAll("button")) {
    const q = Number(b.dataset.q);
    b.classList.toggle("answered", answers.has(q));
    if (q === position) b.setAttribute("aria-current", "step");
    else b.removeAttribute("aria-current");
    b.setAttribute("aria-label", t(answers.has(q) ? "candidate.exam.questionAnswered" : "candidate.exam.question", { n: q }));
  }
  const answered = answers.size;
  const text = t("candidate.exam.answered", { count: answered, total: QUESTIONS });
  if ($("progress-text").textContent !== text) $("progress-text").textContent = text;
  $("progress-bar").style.width = `${(answered / QUESTIONS) * 100}%`;
}

$("choices").addEventListener("change", (e) => {
  if (e.target.name !== "answer") return;
  answers.set(position, e.target.value);
  saveAnswers();
  renderQuestion();
  sendProgress();
});

function goTo(q) {
  position = Math.min(Math.max(q, 1), QUESTIONS);
  renderQuestion();
  sendProgress();
  $("question-title").focus?.();
}

$("prev").addEventListener("click", () => goTo(position - 1));
$("next").addEventListener("click", () => goTo(position + 1));

function sendProgress() {
  conn?.progress(position, answers.size);
}

$("submit").addEventListener("click", () => {
  const left = QUESTIONS - answers.size;
  $("sd-text").textContent = left
    ? `${t("candidate.submit.unanswered", { count: left })} ${t("candidate.submit.final")}`
    : t("candidate.submit.final");
  $("submit-dialog").showModal();
});

$("submit-dialog").addEventListener("close", async () => {
  if ($("submit-dialog").returnValue !== "confirm") return;
  try {
    await conn.submit();
  } catch (err) {
    pushMessage({
      title: t("candidate.message.notSubmittedTitle"),
      text: t("candidate.message.notSubmittedText", { error: errorText(err.code, err.message) }),
      icon: "alert",
      kind: "error",
    });
  }
});

// -- time left --------------------------------------------------------------------------------

function startClock() {
  clearInterval(clockTimer);
  clockTimer = setInterval(renderClock, 500);
  renderClock();
}

function fmt(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function renderClock() {
  const s = conn?.session;
  const clock = $("clock");
  const value = $("time-left");
  if (!s) return;
  const left = conn.timeLeft();
  let text;
  let state = "normal";
  if (left == null) {
    const minutes = (conn.exam?.duration_minutes ?? 0) + (s.extra_minutes ?? 0);
    text = fmt(minutes * 60000);
    state = "idle";
  } else {
    text = fmt(left);
    if (s.status === "paused") state = "paused";
    else if (left <= 0) state = "over";
    else if (left <= 5 * 60000) state = "low";
    for (const mark of [5, 1]) {
      if (s.status === "active" && left <= mark * 60000 && left > (mark * 60000 - 5000) && !announcedLow.has(mark)) {
        announcedLow.add(mark);
        announce(t("candidate.announce.minutesLeft", { count: mark }));
      }
    }
  }
  if (value.textContent !== text) value.textContent = text;
  clock.dataset.state = state;
  clock.setAttribute("aria-label", t(state === "paused" ? "candidate.clock.ariaPaused" : "candidate.clock.aria", { time: text }));
}

// -- focus loss -------------------------------------------------------------------------------

// Reported a moment later, so that closing the page (which hides it first) is not reported as
// focus loss: the disconnect says that already.
let focusTimer = null;

function reportFocusLost(how) {
  if (!conn?.isOpen || conn.session?.status !== "active") return;
  const now = Date.now();
  if (now - focusReported < 1500 || focusTimer) return; // blur and visibilitychange come together
  focusTimer = setTimeout(() => {
    focusTimer = null;
    focusReported = Date.now();
    conn.clientEvent("focus_lost", how);
  }, 250);
}

window.addEventListener("blur", () => reportFocusLost("blur"));
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") reportFocusLost("hidden");
});
window.addEventListener("pagehide", () => {
  clearTimeout(focusTimer);
  focusTimer = null;
});

// -- sign in, guest accounts ------------------------------------------------------------------

const params = new URLSearchParams(location.search);
let offer = { exams: [] };

async function postJson(path, body) {
  let response;
  try {
    // credentials "omit": the login cookie is for staff dashboards, not for this page.
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
    });
  } catch {
    throw Object.assign(new Error(t("candidate.error.unreachable")), { status: 0 });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const err = data?.error ?? {};
    const message = errorText(err.code, err.message ?? response.statusText);
    throw Object.assign(new Error(message), { status: response.status, code: err.code, data: err });
  }
  return data;
}

/** Log in as a candidate and open `examId` with the login token. */
async function signInAndOpen(login, password, examId) {
  const { token } = await postJson("/api/v1/auth/login", { login, password });
  storage()?.setItem(LOGIN_KEY, JSON.stringify({ token, examId }));
  storage()?.removeItem(CODE_KEY);
  start({ token, examId });
}

function loginErrorText(err) {
  if (err.code === "login_blocked" && err.data?.blocked_until) {
    const until = formatTime(err.data.blocked_until, { seconds: false });
    return t("candidate.error.blocked", { until });
  }
  if (err.status === 401) return t("candidate.error.wrongPassword");
  if (err.status === 403) return t("candidate.error.forbidden", { error: err.data?.message ?? err.message });
  return err.message;
}

function setError(id, text) {
  $(id).textContent = text ?? "";
  $(id).hidden = !text;
}

function showSignIn(message) {
  const fixed = params.get("exam");
  $("signin-exam").value = fixed ?? $("signin-exam").value;
  $("signin-exam-field").hidden = !!fixed;
  $("signin-exams").innerHTML = offer.exams.map((e) => `<option value="${escapeAttr(e.id)}">${escapeAttr(e.title)}</option>`).join("");
  setError("signin-error", message);
  $("signin-password").value = "";
  show("signin");
  ($("signin-login").value ? $("signin-password") : $("signin-login")).focus();
}

function escapeAttr(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

$("show-signin").addEventListener("click", () => showSignIn());
for (const b of document.querySelectorAll("[data-back]")) {
  b.addEventListener("click", () => {
    show("code");
    $("code-input").focus();
  });
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const login = $("signin-login").value.trim();
  const password = $("signin-password").value;
  const examId = $("signin-exam").value.trim();
  const missing = !login
    ? [t("candidate.signin.missingLogin"), "signin-login"]
    : !password
      ? [t("candidate.signin.missingPassword"), "signin-password"]
      : !examId
        ? [t("candidate.signin.missingExam"), "signin-exam"]
        : null;
  if (missing) {
    setError("signin-error", missing[0]);
    $(missing[1]).focus();
    return;
  }
  $("signin-submit").disabled = true;
  try {
    await signInAndOpen(login, password, examId);
  } catch (err) {
    setError("signin-error", loginErrorText(err));
    $("signin-password").value = "";
    $("signin-password").focus();
  } finally {
    $("signin-submit").disabled = false;
  }
});

/** Ask whether this computer may use a guest account now (a live exam in its lab network). */
async function loadOffer() {
  try {
    const response = await fetch("/api/v1/guests/offer", { credentials: "omit", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    offer = await response.json();
  } catch {
    return;
  }
  $("show-guest").hidden = !offer.exams?.length;
}

$("show-guest").addEventListener("click", () => {
  const select = $("guest-exam");
  const wanted = params.get("exam");
  select.innerHTML = offer.exams.map((e) => `<option value="${escapeAttr(e.id)}">${escapeAttr(e.title)}</option>`).join("");
  if (offer.exams.some((e) => e.id === wanted)) select.value = wanted;
  // A link that names an offered exam (or a lab with only one) needs no choice.
  $("guest-exam-field").hidden = offer.exams.length === 1 || select.value === wanted;
  setError("guest-error", "");
  show("guest");
  $("guest-title-input").focus();
});

let reserved = null; // {login, password, exam_id}: in memory only, never stored

$("guest-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {
    exam_id: $("guest-exam").value,
    title: $("guest-title-input").value.trim(),
    first_name: $("guest-first").value.trim(),
    surname: $("guest-surname").value.trim(),
  };
  const number = $("guest-number").value.trim();
  const email = $("guest-email").value.trim();
  if (number) body.student_number = number;
  if (email) body.email = email;
  const missing = !body.title
    ? [t("candidate.guest.missingTitle"), "guest-title-input"]
    : !body.first_name
      ? [t("candidate.guest.missingFirst"), "guest-first"]
      : !body.surname
        ? [t("candidate.guest.missingSurname"), "guest-surname"]
        : null;
  if (missing) {
    setError("guest-error", missing[0]);
    $(missing[1]).focus();
    return;
  }
  $("guest-submit").disabled = true;
  try {
    reserved = await postJson("/api/v1/guests/reserve", body);
  } catch (err) {
    setError(
      "guest-error",
      err.code === "no_guest_free"
        ? t("candidate.guest.noneFree")
        : err.code === "guest_not_offered"
          ? t("candidate.guest.notOffered")
          : err.message,
    );
    return;
  } finally {
    $("guest-submit").disabled = false;
  }
  const exam = offer.exams.find((x) => x.id === reserved.exam_id);
  $("ga-login").textContent = reserved.login;
  $("ga-password").textContent = reserved.password;
  $("ga-exam").textContent = exam ? t("candidate.ga.forExam", { title: exam.title }) : "";
  $("ga-confirm").checked = false;
  $("ga-continue").disabled = true;
  setError("ga-error", "");
  show("guest-account");
  announce(t("candidate.announce.guestAccount", { login: reserved.login }));
  $("ga-title").focus?.();
});

$("ga-confirm").addEventListener("change", () => {
  $("ga-continue").disabled = !$("ga-confirm").checked;
});

$("ga-continue").addEventListener("click", async () => {
  if (!reserved) return;
  $("ga-continue").disabled = true;
  try {
    await signInAndOpen(reserved.login, reserved.password, reserved.exam_id);
  } catch (err) {
    setError("ga-error", loginErrorText(err));
    $("ga-continue").disabled = false;
    return;
  }
  // Shown once: gone from the page as soon as the exam opens.
  reserved = null;
  $("ga-login").textContent = "";
  $("ga-password").textContent = "";
});

// -- language ---------------------------------------------------------------------------------

function updateTitle() {
  document.title = conn?.exam?.title ? `${conn.exam.title} · ${t("candidate.exam")}` : t("candidate.exam");
}

languageSwitch($("language"));
updateTitle();
onLanguageChange(() => {
  // Static text and localize()d text are re-translated already; redraw what is made from data.
  updateTitle();
  if (conn?.session && ["waiting", "exam"].includes(document.body.dataset.screen)) {
    renderQuestion();
    renderClock();
    renderHand();
  }
});

// -- keyboard shortcuts (listed in the help dialog) ------------------------------------------

const openHelp = setUpHelpDialog($("help-dialog"));
$("help-open").addEventListener("click", openHelp);
const inExam = () => document.body.dataset.screen === "exam" && !$("main").inert;
function choose(index) {
  const input = $("choices").querySelectorAll("input[name='answer']")[index];
  if (!input) return;
  input.checked = true;
  input.focus();
  input.dispatchEvent(new Event("change", { bubbles: true })); // as a click would
}
const examKeys = {
  n: () => inExam() && !$("next").disabled && $("next").click(),
  b: () => inExam() && !$("prev").disabled && $("prev").click(),
  ...Object.fromEntries(CHOICES.map((_, i) => [String(i + 1), () => inExam() && choose(i)])),
};
listenKeys({ ...examKeys, "?": openHelp }, { blocked: () => $("main").inert });

// -- boot -------------------------------------------------------------------------------------

const initialCode = params.get("code") ?? storage()?.getItem(CODE_KEY);
const initialToken = params.get("token"); // a session token, or a login token with ?exam=
let storedLogin = null;
try {
  storedLogin = JSON.parse(storage()?.getItem(LOGIN_KEY) ?? "null");
} catch {
  storedLogin = null;
}
if (initialCode || initialToken) {
  start({ code: initialCode?.trim().toUpperCase(), token: initialToken, examId: params.get("exam") });
} else if (storedLogin?.token && storedLogin.examId) {
  start({ token: storedLogin.token, examId: storedLogin.examId }); // a reload of a signed-in tab
} else {
  show("code");
  $("code-input").focus();
}
loadOffer();
