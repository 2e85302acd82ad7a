// The links mailed to staff (or shown once to the admin): account activation for invited users,
// `/dashboard/#/activate?token=…` (`POST /api/v1/auth/activate`), and password reset,
// `/dashboard/#/reset?token=…` (`POST /api/v1/auth/password-reset/confirm`). Both choose a
// password on the same form. Also the sign-in page's "Forgot your password?" request.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

const MODES = {
  activate: {
    title: "Activate your account",
    intro: "Choose a password (at least 8 characters) to finish setting up your staff account.",
    submit: "Activate",
    done: "Your account is active",
    doneText: "You can now sign in with your login or e-mail and the password you chose.",
    send: (token, password) => api.activate(token, password),
    what: "activation link",
    askAgain: "Ask your administrator for a new one.",
  },
  reset: {
    title: "Choose a new password",
    intro: "Choose a new password (at least 8 characters). You will be signed out everywhere else.",
    submit: "Set the password",
    done: "Your password is changed",
    doneText: "You can now sign in with your login or e-mail and the new password.",
    send: (token, password) => api.confirmReset(token, password),
    what: "reset link",
    askAgain: "Ask for a new one on the sign-in page.",
  },
};

function linkOf(hash) {
  for (const mode of Object.keys(MODES)) if (hash.startsWith(`#/${mode}`)) return mode;
  return null;
}

/** The token of an activation or reset link in the URL hash, "" for a link without one, null
 * if the page is neither. */
export function activationToken() {
  const hash = location.hash;
  if (linkOf(hash) === null) return null;
  const q = hash.indexOf("?");
  return new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "").get("token") ?? "";
}

let current = "";
let mode = MODES.activate;
let bound = false;

function setError(text) {
  $("activate-error").textContent = text ?? "";
  $("activate-error").hidden = !text;
}

const noToken = () => `This link has no token. ${mode.askAgain}`;

async function onSubmit(event) {
  event.preventDefault();
  const password = $("activate-password").value;
  const confirm = $("activate-confirm").value;
  if (!current) return setError(noToken());
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
    await mode.send(current, password);
  } catch (err) {
    setError(
      err.status === 404
        ? `This ${mode.what} is unknown or was already used. ${mode.askAgain}`
        : err.status === 409
          ? `This ${mode.what} has expired. ${mode.askAgain}`
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
  mode = MODES[linkOf(location.hash) ?? "activate"];
  if (!bound) {
    bound = true;
    $("activate-form").addEventListener("submit", onSubmit);
  }
  $("activate-title").textContent = mode.title;
  $("activate-intro").textContent = mode.intro;
  $("activate-submit").textContent = mode.submit;
  $("activate-done-title").textContent = mode.done;
  $("activate-done-text").textContent = mode.doneText;
  document.title = `${mode.title} · Proctor dashboard`;
  $("activate-form").hidden = false;
  $("activate-done").hidden = true;
  $("activate-password").value = "";
  $("activate-confirm").value = "";
  setError(token ? "" : noToken());
  $("activate-password").focus();
}

/** "Forgot your password?" on the sign-in page: the answer is the same whether or not the
 * address has an account. */
async function onForgot(event) {
  event.preventDefault();
  const email = $("forgot-email").value.trim();
  const status = $("forgot-status");
  if (!email) {
    status.textContent = "Enter the e-mail address of your account.";
    return;
  }
  const button = $("forgot-submit");
  button.disabled = true;
  try {
    const answer = await api.requestReset(email);
    status.textContent = answer.message;
  } catch (err) {
    status.textContent = err.status === 404
      ? "Password reset by e-mail is not set up here. Ask your administrator."
      : err.message;
  } finally {
    button.disabled = false;
  }
}

$("forgot-form")?.addEventListener("submit", onForgot);
