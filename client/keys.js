// Keyboard shortcuts of the dashboard and the candidate page: one keydown listener per page
// that maps a key to what it does, and the help dialog listing them.
//
// A shortcut never fires while the user types (text fields, selects, editable content), with
// Ctrl/Alt/Meta held (the browser's and the screen reader's own keys), or behind a modal
// dialog (Escape there is the dialog's own). Actions bound here call the same functions as the
// buttons, so commands keep their confirmation.

const TEXT_INPUTS = new Set(["text", "search", "password", "email", "number", "url", "tel", "date", "datetime-local", "time", "month", "week"]);

/** Whether a key pressed on `target` is typing rather than a command. */
export function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.closest("textarea, select, [contenteditable=''], [contenteditable='true']")) return true;
  const input = target.closest("input");
  return !!input && TEXT_INPUTS.has(input.type);
}

/**
 * Listen for shortcuts: `keys` maps `KeyboardEvent.key` to a handler; a handler returning
 * false lets the key do its default too. Returns how to stop listening.
 * @param {Record<string, (e: KeyboardEvent) => unknown>} keys
 * @param {{blocked?: () => boolean}} [o] when blocked() is true, no shortcut fires
 */
export function listenKeys(keys, { blocked = () => false } = {}) {
  const onKey = (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.altKey || e.metaKey || e.isComposing) return;
    const handler = keys[e.key];
    if (!handler || isTyping(e.target) || document.querySelector("dialog[open]") || blocked()) return;
    if (handler(e) !== false) e.preventDefault();
  };
  document.addEventListener("keydown", onKey);
  return () => document.removeEventListener("keydown", onKey);
}

/**
 * The help dialog (a modal <dialog>: the page behind is inert). Tab and Shift+Tab cycle inside
 * it rather than leaving for the browser's toolbar; focus returns to where it was on close.
 * @param {HTMLDialogElement} dialog
 */
export function setUpHelpDialog(dialog) {
  let back = null;
  dialog.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const focusable = [...dialog.querySelectorAll("button, [href], input, select, textarea, [tabindex]:not([tabindex='-1'])")].filter(
      (el) => !el.disabled && el.getClientRects().length,
    );
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  });
  dialog.addEventListener("close", () => {
    if (back && document.contains(back)) back.focus();
    back = null;
  });
  return function open() {
    if (dialog.open) return;
    back = document.activeElement;
    dialog.showModal();
    dialog.querySelector("button")?.focus();
  };
}
