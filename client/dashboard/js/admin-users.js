// The Users page (users.manage): search as you type, filters, create, edit roles and groups,
// deactivate/reactivate, unlock a blocked login, new activation links, CSV export.

import { api, download, query } from "./api.js";
import { session } from "./auth.js";
import { clockTime, esc, plural } from "./format.js";
import { askCommand, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);

let bound = false;
let roles = null; // [{name, description, ...}]
let users = new Map();
let loadSeq = 0;
let searchTimer = null;
let editing = null; // the user being edited, null when creating

function filters() {
  return {
    search: $("users-search").value.trim(),
    role: $("users-role").value,
    group: $("users-group").value.trim(),
    status: $("users-status").value,
  };
}

function csvPath() {
  return `/api/v1/users.csv${query(filters())}`;
}

export async function showUsers() {
  if (!bound) bind();
  $("users-csv").hidden = !session.can("users.export");
  if (!roles) {
    try {
      roles = (await api.roles()).roles;
      const select = $("users-role");
      select.innerHTML =
        `<option value="">All roles</option>` + roles.map((r) => `<option value="${esc(r.name)}">${esc(r.name)}</option>`).join("");
    } catch (err) {
      toast(`Could not load the roles: ${err.message}`, "error");
    }
  }
  await load();
}

/** Reload the list with the current filters (the latest request wins). */
export async function load() {
  const mine = ++loadSeq;
  $("users-csv").href = csvPath();
  $("users-count").textContent = "Loading…";
  let list;
  try {
    ({ users: list } = await api.users(filters()));
  } catch (err) {
    if (mine === loadSeq) $("users-count").textContent = `Could not load the users: ${err.message}`;
    return;
  }
  if (mine !== loadSeq) return;
  users = new Map(list.map((u) => [u.id, u]));
  $("users-count").textContent = plural(list.length, "user");
  $("users-rows").innerHTML = list.map(renderRow).join("") ||
    `<tr><td colspan="9" class="empty-state">No user matches these filters.</td></tr>`;
}

function renderRow(u) {
  const blocked = u.blocked_until
    ? `<span class="error-text blocked">Blocked until ${esc(clockTime(u.blocked_until))}</span>`
    : `<span class="muted">—</span>`;
  const online = u.logged_in ? `<span class="conn online"><span class="dot"></span>Yes</span>` : `<span class="muted">No</span>`;
  const actions = [`<button type="button" class="btn small" data-user-action="edit">Edit…</button>`];
  if (u.blocked_until) actions.push(`<button type="button" class="btn small primary" data-user-action="unlock">Unlock</button>`);
  if (u.status === "deactivated") actions.push(`<button type="button" class="btn small" data-user-action="reactivate">Reactivate</button>`);
  else actions.push(`<button type="button" class="btn small danger" data-user-action="deactivate">Deactivate…</button>`);
  if (u.status === "invited") {
    const label = u.invitation ? "Resend invitation" : "New activation link";
    actions.push(`<button type="button" class="btn small" data-user-action="invitation">${label}</button>`);
  }
  return `<tr data-user-id="${esc(u.id)}" data-status="${esc(u.status)}" data-blocked="${!!u.blocked_until}">
    <td><span class="strong">${esc(u.full_name)}</span><span class="sub">${esc(u.email)}${u.login ? ` · ${esc(u.login)}` : ""}</span></td>
    <td>${u.roles.map((r) => `<span class="flag">${esc(r)}</span>`).join(" ")}</td>
    <td>${esc(u.groups.join(", ")) || `<span class="muted">—</span>`}</td>
    <td><span class="badge us-${esc(u.status)}">${esc(u.status)}</span>${invitationNote(u)}</td>
    <td class="col-blocked">${blocked}</td>
    <td class="col-online">${online}</td>
    <td>${u.last_login_at ? esc(clockTime(u.last_login_at)) : `<span class="muted">never</span>`}</td>
    <td>${u.last_logout_at ? esc(clockTime(u.last_logout_at)) : `<span class="muted">—</span>`}</td>
    <td><div class="row-actions">${actions.join("")}</div></td>
  </tr>`;
}

/** How the latest invitation e-mail of an invited user went (with SMTP set up). */
function invitationNote(u) {
  const mail = u.status === "invited" ? u.invitation : null;
  if (!mail) return "";
  if (mail.status === "sent") return `<span class="sub invitation" data-mail="sent">Invitation e-mailed ${esc(clockTime(mail.sent_at))}</span>`;
  if (mail.status === "failed") {
    return `<span class="sub invitation error-text" data-mail="failed" title="${esc(mail.last_error)}">Invitation NOT sent: ${esc(mail.last_error)}</span>`;
  }
  return `<span class="sub invitation" data-mail="pending">Invitation being sent (attempt ${mail.attempts + 1})</span>`;
}

/** After an action that made a new activation token: the link itself (no SMTP) or where the
 * e-mail carrying it went. */
function announceInvitation(user, result) {
  if (result?.activation_token) showInvitation(user, result.activation_token, result.activation_expires_at);
  else if (result?.invitation) toast(`Invitation e-mailed to ${result.invitation.recipient}`, "ok");
}

function bind() {
  bound = true;
  $("users-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(load, 150);
  });
  for (const id of ["users-role", "users-status"]) $(id).addEventListener("change", load);
  $("users-group").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(load, 250);
  });
  $("users-csv").addEventListener("click", (e) => {
    if (session.mode !== "token") return; // the cookie goes with a plain link
    e.preventDefault();
    download(csvPath(), "users.csv").catch((err) => toast(err.message, "error"));
  });
  $("user-new").addEventListener("click", () => openEditor(null));
  $("users-rows").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-user-action]");
    if (!button) return;
    const user = users.get(button.closest("tr").dataset.userId);
    if (user) act(button.dataset.userAction, user, button);
  });
  $("ud-form").addEventListener("submit", onSave);
  $("inv-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("inv-link").value);
      toast("Link copied", "ok");
    } catch {
      $("inv-link").select();
    }
  });
}

async function act(action, user, button) {
  if (action === "edit") return openEditor(user);
  if (action === "deactivate") {
    const ok = await askCommand({
      title: `Deactivate ${user.full_name}?`,
      body: "They are signed out everywhere at once and cannot sign in until reactivated. Their history is kept.",
      confirmLabel: "Deactivate",
      danger: true,
      reason: false,
    });
    if (!ok) return;
  }
  button.disabled = true;
  try {
    const result = await api.userAction(user.id, action);
    const done = {
      unlock: `Unlocked the login of ${user.full_name}`,
      deactivate: `Deactivated ${user.full_name}`,
      reactivate: `Reactivated ${user.full_name}`,
      invitation: `New activation link for ${user.full_name}`,
    }[action];
    toast(done, "ok");
    announceInvitation(user, result);
  } catch (err) {
    toast(`${action[0].toUpperCase()}${action.slice(1)} failed: ${err.message}`, "error", 10000);
  } finally {
    button.disabled = false;
  }
  await load();
}

function openEditor(user) {
  editing = user;
  $("ud-title").textContent = user ? `Edit ${user.full_name}` : "New user";
  $("ud-confirm").textContent = user ? "Save" : "Create user";
  $("ud-name").value = user?.full_name ?? "";
  $("ud-email").value = user?.email ?? "";
  $("ud-login").value = user?.login ?? "";
  $("ud-groups").value = user?.groups.join(", ") ?? "";
  const have = new Set(user?.roles ?? []);
  $("ud-roles").innerHTML = (roles ?? [])
    .map(
      (r) => `<label class="check" title="${esc(r.description ?? "")}"><input type="checkbox" name="role" value="${esc(r.name)}"${have.has(r.name) ? " checked" : ""}> ${esc(r.name)}</label>`,
    )
    .join("");
  $("ud-error").hidden = true;
  $("user-dialog").returnValue = "";
  $("user-dialog").showModal();
  $("ud-name").focus();
}

async function onSave(event) {
  if (event.submitter?.value !== "confirm") return; // Cancel closes the dialog
  event.preventDefault();
  const error = $("ud-error");
  const fields = {
    full_name: $("ud-name").value.trim(),
    email: $("ud-email").value.trim(),
    login: $("ud-login").value.trim(),
    roles: [...$("ud-roles").querySelectorAll("input:checked")].map((i) => i.value),
    groups: $("ud-groups").value.split(",").map((g) => g.trim()).filter(Boolean),
  };
  const missing = !fields.full_name ? "Enter the full name." : !fields.email ? "Enter the e-mail address." : !fields.roles.length ? "Choose at least one role." : "";
  if (missing) {
    error.textContent = missing;
    error.hidden = false;
    return;
  }
  if (!editing && !fields.login) delete fields.login;
  const button = $("ud-confirm");
  button.disabled = true;
  try {
    if (editing) {
      await api.updateUser(editing.id, fields);
      toast(`Saved ${fields.full_name}`, "ok");
      $("user-dialog").close();
    } else {
      const created = await api.createUser(fields);
      $("user-dialog").close();
      toast(`Created ${fields.full_name}`, "ok");
      announceInvitation(created.user, created);
    }
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    return;
  } finally {
    button.disabled = false;
  }
  await load();
}

/** The activation link, shown once (the server keeps only its hash). */
function showInvitation(user, token, expiresAt) {
  const link = `${location.origin}/dashboard/#/activate?token=${encodeURIComponent(token)}`;
  $("inv-title").textContent = `Activation link for ${user.full_name}`;
  $("inv-link").value = link;
  $("inv-token").value = token;
  $("inv-expires").textContent = expiresAt ? `Valid until ${new Date(expiresAt * 1000).toLocaleString()}. It is shown only this once.` : "It is shown only this once.";
  $("invite-dialog").showModal();
  $("inv-link").select();
}
