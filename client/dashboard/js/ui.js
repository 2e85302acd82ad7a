// Toasts, screen-reader announcements and the command dialog.

import { plain, t } from "/client/i18n.js";
import { esc } from "./format.js";

/**
 * Show a short message (also read by screen readers through the toasts' aria-live region).
 * @param {string} text
 * @param {"info"|"ok"|"warn"|"error"} [kind]
 */
export function toast(text, kind = "info", timeout = 6000) {
  const box = document.getElementById("toasts");
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.innerHTML = `<span>${esc(text)}</span><button type="button" class="btn ghost small" aria-label="${esc(t("dashboard.common.dismiss"))}">✕</button>`;
  el.querySelector("button").addEventListener("click", () => el.remove());
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (timeout) setTimeout(() => el.remove(), timeout);
  return el;
}

/**
 * Ask for confirmation (and the command's parameters) in a modal <dialog>.
 *
 * @param {object} o
 * @param {string} o.title
 * @param {string} o.body
 * @param {string[]} [o.names] who is affected (the first few are listed)
 * @param {number} [o.count] how many are affected
 * @param {string} o.confirmLabel
 * @param {boolean} [o.danger]
 * @param {"minutes"|"text"|null} [o.input]
 * @param {boolean} [o.reason=true] offer a reason field
 * @returns {Promise<null|{reason?: string, minutes?: number, text?: string}>} null if cancelled
 */
export function askCommand({ title, body, names = [], count = names.length, confirmLabel, danger = false, input = null, reason = true }) {
  const dialog = document.getElementById("command-dialog");
  const q = (id) => document.getElementById(id);
  plain(q("cd-title"), title);
  q("cd-body").textContent = body;
  const list = q("cd-names");
  list.innerHTML = "";
  const shown = names.slice(0, 8);
  for (const name of shown) {
    const li = document.createElement("li");
    li.textContent = name;
    list.append(li);
  }
  if (count > shown.length && shown.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = t("dashboard.command.andMore", { count: count - shown.length });
    list.append(li);
  }
  list.hidden = shown.length === 0;
  q("cd-minutes-field").hidden = input !== "minutes";
  q("cd-text-field").hidden = input !== "text";
  q("cd-reason-field").hidden = !reason;
  q("cd-reason").value = "";
  q("cd-text").value = "";
  q("cd-minutes").value = "10";
  q("cd-error").hidden = true;
  const confirm = q("cd-confirm");
  plain(confirm, confirmLabel);
  confirm.className = `btn ${danger ? "danger" : "primary"}`;

  return new Promise((resolve) => {
    const form = q("cd-form");
    function onSubmit(event) {
      const submitter = event.submitter;
      if (submitter?.value !== "confirm") return; // Cancel closes the dialog
      const result = {};
      if (input === "minutes") {
        const minutes = Number(q("cd-minutes").value);
        if (!Number.isInteger(minutes) || minutes < 1 || minutes > 1440) {
          event.preventDefault();
          q("cd-error").textContent = t("dashboard.command.badMinutes");
          q("cd-error").hidden = false;
          q("cd-minutes").focus();
          return;
        }
        result.minutes = minutes;
      }
      if (input === "text") {
        const text = q("cd-text").value.trim();
        if (!text) {
          event.preventDefault();
          q("cd-error").textContent = t("dashboard.command.noText");
          q("cd-error").hidden = false;
          q("cd-text").focus();
          return;
        }
        result.text = text;
      }
      const why = q("cd-reason").value.trim();
      if (reason && why) result.reason = why;
      dialog.returnValue = "confirm";
      pending = result;
    }
    let pending = null;
    function onClose() {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "confirm" ? pending : null);
    }
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
    const first = input === "minutes" ? q("cd-minutes") : input === "text" ? q("cd-text") : danger ? q("cd-cancel") : confirm;
    first.focus();
  });
}
