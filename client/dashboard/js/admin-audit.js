// The Audit page (audit.view): entries by user and date range, newest first, CSV export.

import { api, download, query } from "./api.js";
import { session } from "./auth.js";
import { formatTime, localize, plain, t } from "/client/i18n.js";
import { esc } from "./format.js";
import { toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const LIMIT = 5000;

let bound = false;
let names = new Map(); // user id -> name
let loadSeq = 0;

/** A datetime-local value (local time) as epoch seconds, or "". */
function epoch(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : String(ms / 1000);
}

function filters() {
  return {
    user: $("audit-user").value,
    from: epoch($("audit-from").value),
    to: epoch($("audit-to").value),
    action: $("audit-action").value.trim(),
  };
}

function who(ref) {
  // "staff:<id>", "user:<id>", "login:<name>", "anonymous", "guest:<login>" ...
  const [kind, id] = ref.includes(":") ? [ref.slice(0, ref.indexOf(":")), ref.slice(ref.indexOf(":") + 1)] : [ref, ""];
  if ((kind === "staff" || kind === "user") && names.has(id)) return `${names.get(id)}`;
  if (kind === "staff" && id === "admin") return t("dashboard.top.staffToken");
  return ref;
}

export async function showAudit() {
  if (!bound) bind();
  if (session.can("users.manage")) {
    try {
      const { users } = await api.users();
      names = new Map(users.map((u) => [u.id, u.full_name]));
      const select = $("audit-user");
      const current = select.value;
      select.innerHTML =
        `<option value="" data-i18n="dashboard.audit.everyone">${esc(t("dashboard.audit.everyone"))}</option>` +
        users.map((u) => `<option value="${esc(u.id)}">${esc(u.full_name)} (${esc(u.email)})</option>`).join("");
      select.value = current;
    } catch {
      // names are a nicety
    }
  }
  await load();
}

async function load() {
  const mine = ++loadSeq;
  const f = filters();
  $("audit-csv").href = `/api/v1/audit.csv${query(f)}`;
  localize($("audit-count"), "dashboard.common.loading");
  let entries;
  try {
    ({ entries } = await api.audit({ ...f, limit: LIMIT, order: "desc" }));
  } catch (err) {
    if (mine === loadSeq) plain($("audit-count"), t("dashboard.audit.loadFailed", { error: err.message }));
    return;
  }
  if (mine !== loadSeq) return;
  if (entries.length >= LIMIT) localize($("audit-count"), "dashboard.audit.limited", { count: LIMIT });
  else localize($("audit-count"), "dashboard.audit.count", { count: entries.length });
  $("audit-rows").innerHTML =
    entries
      .map((e) => {
        const details = Object.keys(e.details ?? {}).length ? JSON.stringify(e.details) : "";
        return `<tr data-action="${esc(e.action)}">
          <td class="nowrap">${esc(formatTime(e.at, { date: true }))}</td>
          <td translate="no" title="${esc(e.actor)}">${esc(who(e.actor))}</td>
          <td class="mono">${esc(e.ip || "—")}</td>
          <td><span class="flag">${esc(e.action)}</span></td>
          <td translate="no" title="${esc(e.subject)}">${esc(e.subject ? who(e.subject) : "—")}</td>
          <td class="mono details-cell">${esc(details)}</td>
        </tr>`;
      })
      .join("") || `<tr><td colspan="6" class="empty-state">${esc(t("dashboard.audit.empty"))}</td></tr>`;
}

function bind() {
  bound = true;
  $("audit-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  $("audit-user").addEventListener("change", load);
  $("audit-csv").addEventListener("click", (e) => {
    if (session.mode !== "token") return;
    e.preventDefault();
    download($("audit-csv").getAttribute("href"), "audit.csv").catch((err) => toast(err.message, "error"));
  });
}
