// The Exams page (the home view): the list with dates, status, session counts and filters;
// archive and restore; create and edit (exams.manage); roster import and access codes as CSV
// or printable slips (sessions.create).

import { api, download, openPrintView } from "./api.js";
import { session } from "./auth.js";
import { formatTime, localize, plain, t } from "/client/i18n.js";
import { browserTimeZone, epochToZoned, fillZoneSelect, zonedToEpoch } from "/client/timezone.js";
import { esc, statusLabel } from "./format.js";
import { openRosterImport } from "./roster-import.js";
import { askCommand, onRowAction, reloadAfterTyping, saveEditor, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);

const SESSION_ORDER = ["ready", "awaiting", "active", "paused", "completed", "terminated"];

let bound = false;
let exams = new Map();
let loadSeq = 0;
let editing = null; // the exam being edited, null when creating

/** Show the page; the list reloads when a filter changes. */
export function showExams() {
  if (!bound) bind();
  $("exam-new").hidden = !session.can("exams.manage");
  load();
}

/** A `date` input's value as the ISO time of that local midnight (+ `days`), "" for none. */
function dayStart(value, days = 0) {
  if (!value) return "";
  const d = new Date(`${value}T00:00`);
  if (Number.isNaN(d.getTime())) return "";
  d.setDate(d.getDate() + days);
  return d.toISOString();
}

function filters() {
  const state = $("exams-state").value;
  return {
    search: $("exams-search").value.trim(),
    status: state === "all" ? "" : state,
    archived: state === "all" ? "true" : "",
    from: dayStart($("exams-from").value),
    to: dayStart($("exams-to").value, 1), // the whole "to" day
  };
}

/** Reload the list with the current filters (the latest request wins). */
export async function load() {
  const mine = ++loadSeq;
  const status = $("exams-status");
  localize(status, "dashboard.exams.loading");
  let list;
  try {
    ({ exams: list } = await api.listExams(filters()));
  } catch (err) {
    if (mine === loadSeq && err.status !== 401) plain(status, t("dashboard.exams.loadFailed", { error: err.message }));
    return;
  }
  if (mine !== loadSeq) return;
  list.sort(
    (a, b) =>
      (a.status === "archived") - (b.status === "archived") ||
      (b.starts_at ?? b.created_at ?? 0) - (a.starts_at ?? a.created_at ?? 0) ||
      a.title.localeCompare(b.title),
  );
  exams = new Map(list.map((e) => [e.id, e]));
  if (list.length) localize(status, "dashboard.exams.count", { count: list.length });
  else plain(status, "");
  $("exam-rows").innerHTML =
    list.map(renderRow).join("") ||
    `<tr><td colspan="5" class="empty-state">${
      esc(t(Object.values(filters()).some(Boolean) ? "dashboard.exams.noMatch" : "dashboard.exams.none"))
    }</td></tr>`;
}

function when(epoch) {
  return formatTime(epoch, { date: true, seconds: false });
}

function windowText(e) {
  if (e.starts_at == null && e.ends_at == null) return `<span class="muted">${esc(t("dashboard.exams.alwaysOpen"))}</span>`;
  const from = e.starts_at != null ? esc(when(e.starts_at)) : `<span class="muted">${esc(t("dashboard.exams.anyTime"))}</span>`;
  const to = e.ends_at != null ? esc(when(e.ends_at)) : `<span class="muted">${esc(t("dashboard.exams.openEnd"))}</span>`;
  return `<span class="nowrap">${from}</span> – <span class="nowrap">${to}</span>`;
}

function countsText(e) {
  const counts = SESSION_ORDER.filter((s) => e.counts?.[s]).map(
    (s) => `<span class="badge st-${s}" title="${esc(statusLabel(s))}">${esc(t(`dashboard.statusCount.${s}`, { count: e.counts[s] }))}</span>`,
  );
  return `<span class="strong">${e.sessions ?? 0}</span><span class="exam-counts">${counts.join("")}</span>`;
}

function renderRow(e) {
  const meta = [e.id, t("dashboard.exams.minutes", { count: e.duration_minutes })];
  if (e.groups?.length) meta.push(t("dashboard.exams.groups", { groups: e.groups.join(", ") }));
  const flags = [];
  if (e.settings?.lock_sessions) flags.push(`<span class="flag">${esc(t("dashboard.exams.locksOnOpen"))}</span>`);
  if (e.settings?.requires_authorization) flags.push(`<span class="flag">${esc(t("dashboard.exams.authorization"))}</span>`);
  if (e.settings?.resume_grace_seconds === 0) flags.push(`<span class="flag">${esc(t("dashboard.exams.strictResume"))}</span>`);
  // Seen only through its candidates (another group's exam): watch it, change nothing.
  const manage = e.manages !== false && session.can("exams.manage");
  const create = e.manages !== false && session.can("sessions.create");
  const button = (action, cls = "") =>
    `<button type="button" class="btn small${cls}" data-exam-action="${action}">${esc(t(`dashboard.exams.button.${action}`))}</button>`;
  const actions = [`<a class="btn small" href="?exam=${encodeURIComponent(e.id)}" data-monitor>${esc(t("dashboard.exams.button.monitor"))}</a>`];
  if (manage) actions.push(button("edit"));
  if (create) {
    actions.push(button("roster"));
    actions.push(button("codes"));
    actions.push(button("slips"));
  }
  if (manage && e.status === "archived") actions.push(button("restore"));
  else if (manage) actions.push(button("archive", " danger"));
  return `<tr data-exam-id="${esc(e.id)}" data-status="${esc(e.status)}">
    <td><a class="strong" href="?exam=${encodeURIComponent(e.id)}" data-exam="${esc(e.id)}" translate="no">${esc(e.title)}</a>
      <span class="sub">${esc(meta.join(" · "))}</span>${flags.length ? `<span class="flags">${flags.join("")}</span>` : ""}</td>
    <td>${windowText(e)}</td>
    <td><span class="badge ex-${esc(e.status)}">${esc(examStatusLabel(e.status))}</span></td>
    <td>${countsText(e)}</td>
    <td><div class="row-actions">${actions.join("")}</div></td>
  </tr>`;
}

/** An exam's status (scheduled, running, ended, archived) in the page's language. */
function examStatusLabel(status) {
  const key = `dashboard.examStatus.${status}`;
  const text = t(key);
  return text === key ? status : text;
}

function bind() {
  bound = true;
  const later = reloadAfterTyping(load);
  $("exams-search").addEventListener("input", later(200));
  for (const id of ["exams-state", "exams-from", "exams-to"]) $(id).addEventListener("change", load);
  $("exam-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  $("reload-exams").addEventListener("click", load);
  $("exam-new").addEventListener("click", () => openEditor(null));
  onRowAction($("exam-rows"), "data-exam-action", (tr) => exams.get(tr.dataset.examId), act);
  $("ed-form").addEventListener("submit", onSave);
  $("ed-zone").addEventListener("change", onZoneChange);
}

async function act(action, exam, button) {
  const path = `/api/v1/exams/${encodeURIComponent(exam.id)}`;
  try {
    if (action === "edit") return openEditor(exam);
    if (action === "roster") return openRosterImport(exam, load);
    if (action === "codes") return await download(`${path}/access-codes.csv`, `${exam.id}-access-codes.csv`);
    if (action === "slips") return await openPrintView(`${path}/access-codes.html`);
    button.disabled = true;
    if (action === "restore") {
      await api.restoreExam(exam.id);
      toast(t("dashboard.exams.restored", { title: exam.title }), "ok");
    } else if (action === "archive") {
      await archive(exam);
    }
  } catch (err) {
    toast(`${exam.title}: ${err.message}`, "error", 10000);
  } finally {
    button.disabled = false;
  }
  await load();
}

/** Archive after a confirmation; with candidates connected the server refuses (409) until a
 * second, explicit confirmation forces it. */
async function archive(exam) {
  const ok = await askCommand({
    title: t("dashboard.exams.archiveTitle", { title: exam.title }),
    body: t("dashboard.exams.archiveBody"),
    confirmLabel: t("dashboard.exams.archiveConfirm"),
    danger: true,
    reason: false,
  });
  if (!ok) return;
  try {
    await api.archiveExam(exam.id);
  } catch (err) {
    if (err.status !== 409) throw err;
    const force = await askCommand({
      title: t("dashboard.exams.connectedTitle", { title: exam.title }),
      body: t("dashboard.exams.connectedBody", { reason: (err.data?.message ?? err.message).split(":")[0] }),
      confirmLabel: t("dashboard.exams.archiveAnyway"),
      danger: true,
      reason: false,
    });
    if (!force) return;
    await api.archiveExam(exam.id, true);
  }
  toast(t("dashboard.exams.archived", { title: exam.title }), "ok");
}

/** The window's wall-clock times are read in the zone chosen beside them (the browser's by
 * default): epoch seconds <-> a `datetime-local` value in that zone. */
function toZonedInput(epoch) {
  return epoch == null ? "" : epochToZoned(epoch, $("ed-zone").value);
}

function fromZonedInput(value) {
  if (!value) return null;
  return zonedToEpoch(value, $("ed-zone").value) ?? undefined;
}

/** A new zone keeps the instants: the inputs are rewritten as the same times seen from it. */
let shownZone = null;
function onZoneChange() {
  const zone = $("ed-zone").value;
  for (const id of ["ed-starts", "ed-ends"]) {
    const epoch = $(id).value ? zonedToEpoch($(id).value, shownZone) : null;
    if (epoch != null) $(id).value = epochToZoned(epoch, zone);
  }
  shownZone = zone;
}

const list = (value) =>
  value
    .split(",")
    .map((v) => v.trim())
    .filter(Boolean);

function openEditor(exam) {
  editing = exam;
  if (exam) plain($("ed-title"), t("dashboard.examDialog.editTitle", { title: exam.title }));
  else localize($("ed-title"), "dashboard.examDialog.edTitle");
  localize($("ed-confirm"), exam ? "dashboard.userDialog.save" : "dashboard.examDialog.edConfirm");
  fillZoneSelect($("ed-zone"), browserTimeZone());
  shownZone = $("ed-zone").value;
  $("ed-id-field").hidden = !!exam;
  $("ed-id").value = "";
  $("ed-name").value = exam?.title ?? "";
  $("ed-starts").value = toZonedInput(exam?.starts_at);
  $("ed-ends").value = toZonedInput(exam?.ends_at);
  $("ed-duration").value = exam?.duration_minutes ?? 60;
  $("ed-groups").value = exam?.groups.join(", ") ?? session.me?.groups?.join(", ") ?? "";
  $("ed-lock").checked = !!exam?.settings?.lock_sessions;
  $("ed-authorize").checked = !!exam?.settings?.requires_authorization;
  $("ed-guests").checked = !!exam?.settings?.allow_guests;
  $("ed-networks").value = exam?.settings?.lab_networks?.join(", ") ?? "";
  $("ed-grace").value = exam?.settings?.resume_grace_seconds ?? "";
  $("ed-error").hidden = true;
  $("exam-dialog").returnValue = "";
  $("exam-dialog").showModal();
  $("ed-name").focus();
}

/** The form's fields as the API takes them, or a message saying what to fix. */
function readForm() {
  const title = $("ed-name").value.trim();
  const starts = fromZonedInput($("ed-starts").value);
  const ends = fromZonedInput($("ed-ends").value);
  const duration = Number($("ed-duration").value);
  const id = $("ed-id").value.trim();
  if (!title) return { problem: t("dashboard.examDialog.missingTitle") };
  if (!editing && id && !/^[A-Za-z0-9_.-]{1,64}$/.test(id)) return { problem: t("dashboard.examDialog.badId") };
  if (starts === undefined || ends === undefined) return { problem: t("dashboard.examDialog.incomplete") };
  if (starts != null && ends != null && ends <= starts) return { problem: t("dashboard.examDialog.closesBeforeOpens") };
  if (!Number.isInteger(duration) || duration < 1 || duration > 1440) return { problem: t("dashboard.examDialog.badDuration") };
  const graceText = $("ed-grace").value.trim();
  const grace = graceText === "" ? null : Number(graceText);
  if (grace != null && (!Number.isInteger(grace) || grace < 0 || grace > 86400)) return { problem: t("dashboard.examDialog.badGrace") };
  const fields = {
    title,
    starts_at: starts,
    ends_at: ends,
    duration_minutes: duration,
    groups: list($("ed-groups").value),
    settings: {
      lock_sessions: $("ed-lock").checked,
      requires_authorization: $("ed-authorize").checked,
      allow_guests: $("ed-guests").checked,
      lab_networks: list($("ed-networks").value),
      resume_grace_seconds: grace, // null: the deployment's REALTIME_RESUME_GRACE
    },
  };
  if (!editing && id) fields.id = id;
  return { fields };
}

async function onSave(event) {
  if (event.submitter?.value !== "confirm") return; // Cancel closes the dialog
  event.preventDefault();
  const error = $("ed-error");
  const { fields, problem } = readForm();
  await saveEditor({
    problem,
    error,
    button: $("ed-confirm"),
    reload: load,
    save: async () => {
      if (editing) {
        await api.updateExam(editing.id, fields);
        toast(t("dashboard.users.saved", { name: fields.title }), "ok");
      } else {
        const created = await api.createExam(fields);
        toast(t("dashboard.exams.created", { title: created.title, id: created.id }), "ok");
      }
      $("exam-dialog").close();
    },
  });
}
