// The Users page (users.manage): search as you type, filters, create, edit roles and groups,
// deactivate/reactivate, unlock a blocked login, new activation links, CSV export.

import { api, download, query } from "./api.js";
import { session } from "./auth.js";
import { formatTime, localize, plain, t } from "/client/i18n.js";
import { clockTime, esc, roleName } from "./format.js";
import { askCommand, onRowAction, reloadAfterTyping, saveEditor, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);

let bound = false;
let roles = null; // [{name, description, ...}]
let users = new Map();
let loadSeq = 0;
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
        `<option value="" data-i18n="dashboard.users.allRoles">${esc(t("dashboard.users.allRoles"))}</option>` +
        roles.map((r) => `<option value="${esc(r.name)}">${esc(roleName(r.name))}</option>`).join("");
    } catch (err) {
      toast(t("dashboard.users.rolesFailed", { error: err.message }), "error");
    }
  }
  await load();
}

/** Reload the list with the current filters (the latest request wins). */
export async function load() {
  const mine = ++loadSeq;
  $("users-csv").href = csvPath();
  localize($("users-count"), "dashboard.common.loading");
  let list;
  try {
    ({ users: list } = await api.users(filters()));
  } catch (err) {
    if (mine === loadSeq) plain($("users-count"), t("dashboard.users.loadFailed", { error: err.message }));
    return;
  }
  if (mine !== loadSeq) return;
  users = new Map(list.map((u) => [u.id, u]));
  localize($("users-count"), "dashboard.users.count", { count: list.length });
  $("users-rows").innerHTML = list.map(renderRow).join("") ||
    `<tr><td colspan="9" class="empty-state">${esc(t("dashboard.users.empty"))}</td></tr>`;
}

function renderRow(u) {
  const blocked = u.blocked_until
    ? `<span class="error-text blocked">${esc(t("dashboard.users.blockedUntil", { time: clockTime(u.blocked_until) }))}</span>`
    : `<span class="muted">—</span>`;
  const online = u.logged_in
    ? `<span class="conn online"><span class="dot"></span>${esc(t("dashboard.common.yes"))}</span>`
    : `<span class="muted">${esc(t("dashboard.common.no"))}</span>`;
  const button = (action, cls = "", key = action) =>
    `<button type="button" class="btn small${cls}" data-user-action="${action}">${esc(t(`dashboard.users.button.${key}`))}</button>`;
  const actions = [button("edit")];
  if (u.blocked_until) actions.push(button("unlock", " primary"));
  if (u.status === "deactivated") actions.push(button("reactivate"));
  else actions.push(button("deactivate", " danger"));
  if (u.status === "invited") actions.push(button("invitation", "", u.invitation ? "resend" : "invitation"));
  return `<tr data-user-id="${esc(u.id)}" data-status="${esc(u.status)}" data-blocked="${!!u.blocked_until}">
    <td><span class="strong">${esc(u.full_name)}</span><span class="sub">${esc(u.email)}${u.login ? ` · ${esc(u.login)}` : ""}</span></td>
    <td>${u.roles.map((r) => `<span class="flag">${esc(roleName(r))}</span>`).join(" ")}</td>
    <td>${esc(u.groups.join(", ")) || `<span class="muted">—</span>`}</td>
    <td><span class="badge us-${esc(u.status)}">${esc(t(`dashboard.userStatus.${u.status}`))}</span>${invitationNote(u)}</td>
    <td class="col-blocked">${blocked}</td>
    <td class="col-online">${online}</td>
    <td>${u.last_login_at ? esc(clockTime(u.last_login_at)) : `<span class="muted">${esc(t("dashboard.users.never"))}</span>`}</td>
    <td>${u.last_logout_at ? esc(clockTime(u.last_logout_at)) : `<span class="muted">—</span>`}</td>
    <td><div class="row-actions">${actions.join("")}</div></td>
  </tr>`;
}

/** How the latest invitation e-mail of an invited user went (with SMTP set up). */
function invitationNote(u) {
  const mail = u.status === "invited" ? u.invitation : null;
  if (!mail) return "";
  if (mail.status === "sent") {
    return `<span class="sub invitation" data-mail="sent">${esc(t("dashboard.users.invitationSent", { time: clockTime(mail.sent_at) }))}</span>`;
  }
  if (mail.status === "failed") {
    return `<span class="sub invitation error-text" data-mail="failed" title="${esc(mail.last_error)}">${esc(t("dashboard.users.invitationFailed", { error: mail.last_error }))}</span>`;
  }
  return `<span class="sub invitation" data-mail="pending">${esc(t("dashboard.users.invitationSending", { attempt: mail.attempts + 1 }))}</span>`;
}

/** After an action that made a new activation token: the link itself (no SMTP) or where the
 * e-mail carrying it went. */
function announceInvitation(user, result) {
  if (result?.activation_token) showInvitation(user, result.activation_token, result.activation_expires_at);
  else if (result?.invitation) toast(t("dashboard.users.invitationMailed", { recipient: result.invitation.recipient }), "ok");
}

function bind() {
  bound = true;
  const later = reloadAfterTyping(load);
  $("users-search").addEventListener("input", later(150));
  for (const id of ["users-role", "users-status"]) $(id).addEventListener("change", load);
  $("users-group").addEventListener("input", later(250));
  $("users-csv").addEventListener("click", (e) => {
    if (session.mode !== "token") return; // the cookie goes with a plain link
    e.preventDefault();
    download(csvPath(), "users.csv").catch((err) => toast(err.message, "error"));
  });
  $("user-new").addEventListener("click", () => openEditor(null));
  onRowAction($("users-rows"), "data-user-action", (tr) => users.get(tr.dataset.userId), act);
  $("ud-form").addEventListener("submit", onSave);
  $("inv-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("inv-link").value);
      toast(t("dashboard.invite.copied"), "ok");
    } catch {
      $("inv-link").select();
    }
  });
}

async function act(action, user, button) {
  if (action === "edit") return openEditor(user);
  if (action === "deactivate") {
    const ok = await askCommand({
      title: t("dashboard.users.deactivateTitle", { name: user.full_name }),
      body: t("dashboard.users.deactivateBody"),
      confirmLabel: t("dashboard.users.deactivateConfirm"),
      danger: true,
      reason: false,
    });
    if (!ok) return;
  }
  button.disabled = true;
  try {
    const result = await api.userAction(user.id, action);
    toast(t(`dashboard.users.done.${action}`, { name: user.full_name }), "ok");
    announceInvitation(user, result);
  } catch (err) {
    toast(t(`dashboard.users.failed.${action}`, { error: err.message }), "error", 10000);
  } finally {
    button.disabled = false;
  }
  await load();
}

function openEditor(user) {
  editing = user;
  if (user) plain($("ud-title"), t("dashboard.userDialog.editTitle", { name: user.full_name }));
  else localize($("ud-title"), "dashboard.userDialog.udTitle");
  localize($("ud-confirm"), user ? "dashboard.userDialog.save" : "dashboard.userDialog.udConfirm");
  $("ud-name").value = user?.full_name ?? "";
  $("ud-email").value = user?.email ?? "";
  $("ud-login").value = user?.login ?? "";
  $("ud-groups").value = user?.groups.join(", ") ?? "";
  const have = new Set(user?.roles ?? []);
  $("ud-roles").innerHTML = (roles ?? [])
    .map(
      (r) => `<label class="check" title="${esc(r.description ?? "")}"><input type="checkbox" name="role" value="${esc(r.name)}"${have.has(r.name) ? " checked" : ""}> ${esc(roleName(r.name))}</label>`,
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
  const missing = !fields.full_name
    ? t("dashboard.userDialog.missingName")
    : !fields.email
      ? t("dashboard.userDialog.missingEmail")
      : !fields.roles.length
        ? t("dashboard.userDialog.missingRole")
        : "";
  if (!editing && !fields.login) delete fields.login;
  await saveEditor({
    problem: missing,
    error,
    button: $("ud-confirm"),
    reload: load,
    save: async () => {
      if (editing) {
        await api.updateUser(editing.id, fields);
        toast(t("dashboard.users.saved", { name: fields.full_name }), "ok");
        $("user-dialog").close();
      } else {
        const created = await api.createUser(fields);
        $("user-dialog").close();
        toast(t("dashboard.users.created", { name: fields.full_name }), "ok");
        announceInvitation(created.user, created);
      }
    },
  });
}

/** The activation link, shown once (the server keeps only its hash). */
function showInvitation(user, token, expiresAt) {
  const link = `${location.origin}/dashboard/#/activate?token=${encodeURIComponent(token)}`;
  plain($("inv-title"), t("dashboard.invite.titleFor", { name: user.full_name }));
  $("inv-link").value = link;
  $("inv-token").value = token;
  $("inv-expires").textContent = expiresAt
    ? t("dashboard.invite.validUntil", { time: formatTime(expiresAt, { date: true, seconds: false }) })
    : t("dashboard.invite.onceOnly");
  $("invite-dialog").showModal();
  $("inv-link").select();
}
