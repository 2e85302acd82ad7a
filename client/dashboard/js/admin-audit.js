// The Audit page (audit.view): entries by user and date range, newest first, CSV export.

import { api, download, query } from "./api.js";
import { session } from "./auth.js";
import { esc, plural } from "./format.js";
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
  if (kind === "staff" && id === "admin") return "staff token";
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
        `<option value="">Everyone</option>` +
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
  $("audit-count").textContent = "Loading…";
  let entries;
  try {
    ({ entries } = await api.audit({ ...f, limit: LIMIT, order: "desc" }));
  } catch (err) {
    if (mine === loadSeq) $("audit-count").textContent = `Could not load the audit log: ${err.message}`;
    return;
  }
  if (mine !== loadSeq) return;
  $("audit-count").textContent =
    entries.length >= LIMIT ? `The latest ${LIMIT} entries: narrow the dates to see earlier ones` : plural(entries.length, "entry", "entries");
  $("audit-rows").innerHTML =
    entries
      .map((e) => {
        const details = Object.keys(e.details ?? {}).length ? JSON.stringify(e.details) : "";
        return `<tr data-action="${esc(e.action)}">
          <td class="nowrap">${esc(new Date(e.at * 1000).toLocaleString())}</td>
          <td title="${esc(e.actor)}">${esc(who(e.actor))}</td>
          <td class="mono">${esc(e.ip || "—")}</td>
          <td><span class="flag">${esc(e.action)}</span></td>
          <td title="${esc(e.subject)}">${esc(e.subject ? who(e.subject) : "—")}</td>
          <td class="mono details-cell">${esc(details)}</td>
        </tr>`;
      })
      .join("") || `<tr><td colspan="6" class="empty-state">No entries for these filters.</td></tr>`;
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
