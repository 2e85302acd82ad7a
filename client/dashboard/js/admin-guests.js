// The Guests page: the pool (status; resize with users.manage) and, per exam, the sessions
// taken with guest accounts, with what each guest typed and a "reassign to…" form
// (guests.reassign).

import { api } from "./api.js";
import { session } from "./auth.js";
import { localize, plain, t } from "/client/i18n.js";
import { clockTime, esc, statusLabel } from "./format.js";
import { toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const LIVE = new Set(["awaiting", "active", "paused"]);

let bound = false;
let loadSeq = 0;

export async function showGuests() {
  if (!bound) bind();
  $("pool-form").hidden = !session.can("users.manage");
  await Promise.all([loadPool(), loadExams()]);
}

async function loadPool() {
  try {
    const s = await api.guestStatus();
    renderPool(s);
    if (document.activeElement !== $("pool-size")) $("pool-size").value = String(s.size);
  } catch (err) {
    plain($("pool-status"), t("dashboard.guests.poolFailed", { error: err.message }));
  }
}

function renderPool(s) {
  const items = [["accounts", s.size], ["free", s.free], ["reserved", s.reserved], ["retired", s.retired]];
  $("pool-stats").innerHTML = items
    .map(([k, v]) => `<div data-stat="${k}"><dt data-i18n="dashboard.guests.stat.${k}">${esc(t(`dashboard.guests.stat.${k}`))}</dt><dd>${v ?? 0}</dd></div>`)
    .join("");
}

async function loadExams() {
  const select = $("gs-exam");
  try {
    const { exams } = await api.listExams();
    exams.sort((a, b) => (b.starts_at ?? 0) - (a.starts_at ?? 0) || a.title.localeCompare(b.title));
    const current = select.value || new URLSearchParams(location.search).get("exam") || "";
    select.innerHTML =
      `<option value="" data-i18n="dashboard.guests.chooseExam">${esc(t("dashboard.guests.chooseExam"))}</option>` +
      exams
        .map((e) => `<option value="${esc(e.id)}">${esc(e.title)} (${esc(e.id)})${e.settings?.allow_guests ? ` · ${esc(t("dashboard.guests.allowed"))}` : ""}</option>`)
        .join("");
    if (exams.some((e) => e.id === current)) select.value = current;
  } catch (err) {
    plain($("gs-status"), t("dashboard.exams.loadFailed", { error: err.message }));
    return;
  }
  await loadSessions();
}

async function loadSessions() {
  const mine = ++loadSeq;
  const examId = $("gs-exam").value;
  const list = $("gs-list");
  $("gs-warning").hidden = true;
  if (!examId) {
    list.replaceChildren();
    localize($("gs-status"), "dashboard.guests.chooseToSee");
    return;
  }
  localize($("gs-status"), "dashboard.common.loading");
  let data;
  try {
    data = await api.guestSessions(examId);
  } catch (err) {
    if (mine === loadSeq) plain($("gs-status"), t("dashboard.guests.sessionsFailed", { error: err.message }));
    return;
  }
  if (mine !== loadSeq) return;
  $("gs-warning").textContent = data.warning ?? "";
  $("gs-warning").hidden = !data.warning;
  if (data.sessions.length) localize($("gs-status"), "dashboard.guests.count", { count: data.sessions.length });
  else localize($("gs-status"), "dashboard.guests.none");
  const canReassign = session.can("guests.reassign");
  list.innerHTML = data.sessions.map((s) => renderSession(s, canReassign)).join("");
}

function renderSession(s, canReassign) {
  const g = s.guest ?? {};
  const typed = [g.title, g.first_name, g.surname].filter(Boolean).join(" ") || "—";
  const live = LIVE.has(s.status);
  const form = !canReassign
    ? ""
    : live
      ? `<p class="muted small">${esc(t("dashboard.guests.reassignLater", { status: statusLabel(s.status) }))}</p>`
      : `<form class="reassign-form" data-session-id="${esc(s.session_id)}">
          <p class="reassign-title">${esc(t("dashboard.guests.reassignTo"))}</p>
          <div class="inline-fields">
            <div class="field"><label for="ra-id-${esc(s.session_id)}">${esc(t("dashboard.guests.candidateId"))}</label>
              <input id="ra-id-${esc(s.session_id)}" name="candidate_id" type="text" required maxlength="128" autocomplete="off" value="${esc(g.student_number ?? "")}"></div>
            <div class="field"><label for="ra-name-${esc(s.session_id)}">${esc(t("dashboard.guests.candidateName"))}</label>
              <input id="ra-name-${esc(s.session_id)}" name="candidate_name" type="text" maxlength="200" autocomplete="off" value="${esc([g.first_name, g.surname].filter(Boolean).join(" "))}"></div>
            <div class="field"><label for="ra-group-${esc(s.session_id)}">${esc(t("dashboard.monitor.group"))}</label>
              <input id="ra-group-${esc(s.session_id)}" name="group" type="text" maxlength="200" autocomplete="off" value="${esc(s.group ?? "")}"></div>
          </div>
          <p class="error-text" role="alert" hidden></p>
          <button type="submit" class="btn small primary">${esc(t("dashboard.guests.reassign"))}</button>
        </form>`;
  return `<li class="gs-item card" data-session-id="${esc(s.session_id)}" data-account="${esc(s.account)}">
    <div class="gs-head">
      <span class="strong">${esc(s.account)}</span>
      <span class="badge st-${esc(s.status)}">${esc(statusLabel(s.status))}</span>
      <span class="muted mono small">${esc(t("dashboard.guests.session", { id: s.session_id }))}</span>
    </div>
    <dl class="details">
      <div><dt>${esc(t("dashboard.guests.nameTyped"))}</dt><dd>${esc(typed)}</dd></div>
      <div><dt>${esc(t("dashboard.guests.studentNumber"))}</dt><dd>${esc(g.student_number || "—")}</dd></div>
      <div><dt>${esc(t("dashboard.userDialog.eMail"))}</dt><dd>${esc(g.email || "—")}</dd></div>
      <div><dt>${esc(t("dashboard.guests.reserved"))}</dt><dd>${esc(g.reserved_at ? clockTime(g.reserved_at) : "—")}</dd></div>
      <div><dt>${esc(t("dashboard.guests.from"))}</dt><dd class="mono">${esc(g.ip || g.address || "—")}</dd></div>
    </dl>
    ${form}
  </li>`;
}

async function onReassign(event) {
  const form = event.target.closest("form.reassign-form");
  if (!form) return;
  event.preventDefault();
  const error = form.querySelector(".error-text");
  const data = Object.fromEntries(new FormData(form));
  const body = { candidate_id: data.candidate_id.trim() };
  if (!body.candidate_id) {
    error.textContent = t("dashboard.guests.missingId");
    error.hidden = false;
    return;
  }
  if (data.candidate_name.trim()) body.candidate_name = data.candidate_name.trim();
  if (data.group.trim()) body.group = data.group.trim();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const r = await api.reassignGuest($("gs-exam").value, form.dataset.sessionId, body);
    toast(t("dashboard.guests.reassigned", { account: r.guest_account, candidate: r.candidate_name || r.candidate_id }), "ok", 10000);
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    button.disabled = false;
    return;
  }
  await Promise.all([loadSessions(), loadPool()]);
}

function bind() {
  bound = true;
  $("gs-exam").addEventListener("change", loadSessions);
  $("gs-list").addEventListener("submit", onReassign);
  $("pool-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const size = Number($("pool-size").value);
    if (!Number.isInteger(size) || size < 0) {
      localize($("pool-status"), "dashboard.guests.badSize");
      return;
    }
    localize($("pool-status"), "dashboard.guests.resizing");
    try {
      const s = await api.resizePool(size);
      renderPool(s);
      localize($("pool-status"), "dashboard.guests.resized", { count: s.size, created: s.created ?? 0 });
    } catch (err) {
      plain($("pool-status"), t("dashboard.guests.notResized", { error: err.message }));
    }
  });
}
