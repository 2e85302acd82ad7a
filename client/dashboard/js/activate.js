// Account activation for invited users: `/dashboard/#/activate?token=…` (the link the admin
// sends). Posts the token and the chosen password to `POST /api/v1/auth/activate`.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The activation token in the URL hash, "" for a link without one, null if not activating. */
export function activationToken() {
  const hash = location.hash;
  if (!hash.startsWith("#/activate")) return null;
  const q = hash.indexOf("?");
  return new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "").get("token") ?? "";
}

let current = "";
let bound = false;

function setError(text) {
  $("activate-error").textContent = text ?? "";
  $("activate-error").hidden = !text;
}

async function onSubmit(event) {
  event.preventDefault();
  const password = $("activate-password").value;
  const confirm = $("activate-confirm").value;
  if (!current) return setError("This link has no activation token. Ask your administrator for a new link.");
  if (password.length < 8) {
    $("activate-password").focus();
    return setError("Choose a password of at least 8 characters.");
  }
  if (password !== confirm) {
    $("activate-confirm").focus();
    return setError("The two passwords differ.");
  }
  const button = $("activate-submit");
  button.disabled = true;
  try {
    await api.activate(current, password);
  } catch (err) {
    setError(
      err.status === 404
        ? "This activation link is unknown or was already used. Ask your administrator for a new one."
        : err.status === 409
          ? "This activation link has expired. Ask your administrator for a new one."
          : err.message,
    );
    return;
  } finally {
    button.disabled = false;
  }
  $("activate-form").hidden = true;
  $("activate-done").hidden = false;
  // The token must not stay in the address bar or the history.
  history.replaceState(null, "", location.pathname);
}

export function startActivation(token) {
  current = token;
  if (!bound) {
    bound = true;
    $("activate-form").addEventListener("submit", onSubmit);
  }
  $("activate-form").hidden = false;
  $("activate-done").hidden = true;
  $("activate-password").value = "";
  $("activate-confirm").value = "";
  setError(token ? "" : "This link has no activation token. Ask your administrator for a new link.");
  $("activate-password").focus();
}
