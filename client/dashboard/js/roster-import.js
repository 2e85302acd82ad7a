// Roster import: a CSV file sent in pieces of PIECE_ROWS rows (each with the header), so a big
// file shows its progress and no request nears the body limit; the report lists the rows that
// were not imported, by their line in the file. Importing again is safe: the server leaves
// candidates already in the exam as they are.

import { api } from "./api.js";
import { plain, t } from "/client/i18n.js";
import { esc } from "./format.js";

const $ = (id) => document.getElementById(id);
export const PIECE_ROWS = 500;

let bound = false;
let exam = null;
let onDone = null;
let running = false;

/**
 * The file's records (a quoted field may span lines), each with the line it starts on.
 * Quotes are balanced within a record ("" is an escaped quote, which keeps the count even).
 */
export function records(text) {
  const lines = text.replace(/^\ufeff/, "").split(/\r\n|\n|\r/);
  const out = [];
  let current = null;
  let start = 0;
  let quotes = 0;
  lines.forEach((line, i) => {
    if (current === null) {
      current = line;
      start = i + 1;
    } else current += `\n${line}`;
    quotes += (line.match(/"/g) || []).length;
    if (quotes % 2 === 0) {
      out.push({ line: start, text: current });
      current = null;
      quotes = 0;
    }
  });
  if (current !== null) out.push({ line: start, text: current });
  while (out.length && !out[out.length - 1].text.trim()) out.pop();
  return out;
}

/** The header and pieces of `size` rows: [{firstLine, rows, body}] (blank-only pieces left out). */
export function pieces(text, size = PIECE_ROWS) {
  const [header, ...rows] = records(text);
  const out = [];
  for (let i = 0; i < rows.length; i += size) {
    const part = rows.slice(i, i + size);
    const filled = part.filter((r) => r.text.trim()).length;
    if (!filled) continue;
    out.push({ firstLine: part[0].line, rows: filled, body: `${header.text}\r\n${part.map((r) => r.text).join("\r\n")}\r\n` });
  }
  return { header: header?.text ?? "", pieces: out };
}

export function openRosterImport(target, done) {
  if (!bound) bind();
  exam = target;
  onDone = done;
  plain($("rd-title"), t("dashboard.roster.titleFor", { title: target.title }));
  $("rd-file").value = "";
  $("rd-file").disabled = false;
  $("rd-start").disabled = false;
  $("rd-progress-box").hidden = true;
  $("rd-report").hidden = true;
  $("rd-error").hidden = true;
  $("roster-dialog").returnValue = "";
  $("roster-dialog").showModal();
  $("rd-file").focus();
}

function bind() {
  bound = true;
  $("rd-start").addEventListener("click", start);
  $("roster-dialog").addEventListener("cancel", (e) => {
    if (running) e.preventDefault(); // Escape does not hide an import in progress
  });
  $("roster-dialog").addEventListener("close", () => {
    if (onDone) onDone();
  });
}

function fail(message) {
  $("rd-error").textContent = message;
  $("rd-error").hidden = false;
}

async function start() {
  const file = $("rd-file").files[0];
  $("rd-error").hidden = true;
  if (!file) return fail(t("dashboard.roster.noFile"));
  let text;
  try {
    text = await file.text();
  } catch (err) {
    return fail(t("dashboard.roster.unreadable", { file: file.name, error: err.message }));
  }
  const { header, pieces: parts } = pieces(text);
  if (!header.trim() || !parts.length) return fail(t("dashboard.roster.noRows", { file: file.name }));
  const total = parts.reduce((n, p) => n + p.rows, 0);
  const progress = $("rd-progress");
  progress.max = total;
  progress.value = 0;
  $("rd-progress-box").hidden = false;
  $("rd-report").hidden = true;
  $("rd-file").disabled = true;
  $("rd-start").disabled = true;
  $("rd-close").disabled = true;
  running = true;
  const totals = { created: 0, existing: 0, errors: 0 };
  const errors = [];
  let done = 0;
  let stopped = null;
  try {
    for (const part of parts) {
      $("rd-progress-text").textContent = t("dashboard.roster.importing", { done, count: total });
      let report;
      try {
        report = await api.importRoster(exam.id, part.body, part.firstLine);
      } catch (err) {
        stopped = err.message;
        break;
      }
      for (const key of Object.keys(totals)) totals[key] += report[key];
      errors.push(...report.rows.filter((r) => r.result === "error"));
      done += part.rows;
      progress.value = done;
    }
  } finally {
    running = false;
    $("rd-close").disabled = false;
    $("rd-start").disabled = false;
    $("rd-file").disabled = false;
  }
  $("rd-progress-text").textContent = stopped
    ? t("dashboard.roster.stoppedAfter", { done, count: total })
    : t("dashboard.roster.done", { count: total });
  if (stopped) fail(t(done ? "dashboard.roster.stoppedPartly" : "dashboard.roster.stopped", { error: stopped }));
  showReport(totals, errors);
}

function showReport(totals, errors) {
  $("rd-summary").textContent = [
    t("dashboard.roster.created", { count: totals.created }),
    t("dashboard.roster.existing", { count: totals.existing }),
    t("dashboard.roster.errors", { count: totals.errors }),
  ].join(", ") + ".";
  $("rd-errors-wrap").hidden = !errors.length;
  $("rd-error-rows").innerHTML = errors
    .map((r) => `<tr data-line="${r.row}"><td>${r.row}</td><td>${esc(r.candidate_id) || `<span class="muted">—</span>`}</td><td>${esc(r.message)}</td></tr>`)
    .join("");
  $("rd-report").hidden = false;
}
