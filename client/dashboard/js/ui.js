// Toasts, screen-reader announcements, the command dialog, and what the admin pages share
// (reload after typing, row action buttons, saving from an editor dialog).

import { plain, t } from "/client/i18n.js";
import { fillCategorySelect } from "./categories.js";
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
 * @param {boolean} [o.reasonRequired] the reason must be given (reopen)
 * @param {object[]|null} [o.categories] offer a reason category select with this tree
 * @param {boolean} [o.categoryRequired] a category must be chosen (the deployment says so)
 * @param {string} [o.minutesLabel] the minutes field's label
 * @returns {Promise<null|{reason?: string, reason_category?: string, minutes?: number, text?: string}>} null if cancelled
 */
export function askCommand({
  title, body, names = [], count = names.length, confirmLabel, danger = false, input = null, reason = true,
  reasonRequired = false, categories = null, categoryRequired = false, minutesLabel = t("dashboard.command.minutesToAdd"),
}) {
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
  plain(q("cd-reason-hint"), t(reasonRequired ? "dashboard.command.requiredKeptInThe" : "dashboard.command.optionalKeptInThe"));
  plain(q("cd-minutes-label"), minutesLabel);
  const offerCategory = reason && Array.isArray(categories) && categories.length > 0;
  q("cd-category-field").hidden = !offerCategory;
  q("cd-category").value = "";
  if (offerCategory) {
    fillCategorySelect(q("cd-category"), categories, t(categoryRequired ? "dashboard.command.chooseCategory" : "dashboard.command.noCategory"));
  }
  plain(q("cd-category-hint"), t(categoryRequired ? "dashboard.command.required" : "dashboard.command.optional"));
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
      const category = offerCategory ? q("cd-category").value : "";
      if (categoryRequired && offerCategory && !category) {
        event.preventDefault();
        q("cd-error").textContent = t("dashboard.command.needCategory");
        q("cd-error").hidden = false;
        q("cd-category").focus();
        return;
      }
      if (category) result.reason_category = category;
      const why = q("cd-reason").value.trim();
      if (reasonRequired && !why) {
        event.preventDefault();
        q("cd-error").textContent = t("dashboard.command.needReason");
        q("cd-error").hidden = false;
        q("cd-reason").focus();
        return;
      }
      if (reason && why) result.reason = why;
      dialog.returnValue = "confirm";
      pending = result;
    }
    let pending = null;
    const onInput = () => {
      q("cd-error").hidden = true; // the complaint is answered (or being answered)
    };
    function onClose() {
      form.removeEventListener("input", onInput);
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "confirm" ? pending : null);
    }
    form.addEventListener("submit", onSubmit);
    form.addEventListener("input", onInput);
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
    const first =
      input === "minutes" ? q("cd-minutes")
        : input === "text" ? q("cd-text")
          : offerCategory && categoryRequired ? q("cd-category")
            : reasonRequired ? q("cd-reason")
              : danger ? q("cd-cancel") : confirm;
    first.focus();
  });
}

/**
 * A list's reload that waits for typing to pause: `after(ms)` makes an input handler that
 * (re)starts the one wait, so a keystroke in any input sharing it postpones `reload`.
 * @param {() => void} reload
 * @returns {(ms: number) => () => void}
 */
export function reloadAfterTyping(reload) {
  let timer = null;
  return (ms) => () => {
    clearTimeout(timer);
    timer = setTimeout(reload, ms);
  };
}

/**
 * The action buttons in the rows of an admin table: a click on a `<button>` with `attribute`
 * (e.g. "data-user-action") in `rows` calls `act(action, item, button)`, where the action is
 * the attribute's value and the item what `itemOf(tr)` finds for the button's row (nothing
 * is done when it finds none, e.g. the list was reloaded without it).
 */
export function onRowAction(rows, attribute, itemOf, act) {
  rows.addEventListener("click", (e) => {
    const button = e.target.closest(`button[${attribute}]`);
    if (!button) return;
    const item = itemOf(button.closest("tr"));
    if (item) act(button.getAttribute(attribute), item, button);
  });
}

/**
 * The save of an admin page's editor dialog, once its form is read: a `problem` (what to fix,
 * "" for none) shows in the dialog's `error` line and nothing is sent; else `save()` runs with
 * the confirm `button` disabled, a failure's message shows in the `error` line (the dialog
 * stays open), and a success reloads the page's list (`reload`).
 */
export async function saveEditor({ problem, error, button, save, reload }) {
  if (problem) {
    error.textContent = problem;
    error.hidden = false;
    return;
  }
  button.disabled = true;
  try {
    await save();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    return;
  } finally {
    button.disabled = false;
  }
  await reload();
}
