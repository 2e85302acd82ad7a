// The links mailed to staff (or shown once to the admin): account activation for invited users,
// `/dashboard/#/activate?token=…` (`POST /api/v1/auth/activate`), and password reset,
// `/dashboard/#/reset?token=…` (`POST /api/v1/auth/password-reset/confirm`). Both choose a
// password on the same form. Also the sign-in page's "Forgot your password?" request.

import { localize, plain, t } from "/client/i18n.js";
import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The two kinds of link; their texts are catalogue keys. */
const MODES = {
  activate: {
    title: "dashboard.activate.activateTitle",
    intro: "dashboard.activate.chooseAPasswordAt",
    submit: "dashboard.activate.activateSubmit",
    done: "dashboard.activate.yourAccountIsActive",
    doneText: "dashboard.activate.youCanNowSign",
    send: (token, password) => api.activate(token, password),
    noToken: "dashboard.activate.noToken",
    unknown: "dashboard.activate.unknown",
    expired: "dashboard.activate.expired",
  },
  reset: {
    title: "dashboard.reset.title",
    intro: "dashboard.reset.intro",
    submit: "dashboard.reset.submit",
    done: "dashboard.reset.done",
    doneText: "dashboard.reset.doneText",
    send: (token, password) => api.confirmReset(token, password),
    noToken: "dashboard.reset.noToken",
    unknown: "dashboard.reset.unknown",
    expired: "dashboard.reset.expired",
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

const noToken = () => t(mode.noToken);

/** The catalogue key of the page title for the link in the address bar. */
export function linkTitleKey() {
  return MODES[linkOf(location.hash) ?? "activate"].title;
}

async function onSubmit(event) {
  event.preventDefault();
  const password = $("activate-password").value;
  const confirm = $("activate-confirm").value;
  if (!current) return setError(noToken());
  if (password.length < 8) {
    $("activate-password").focus();
    return setError(t("dashboard.activate.tooShort"));
  }
  if (password !== confirm) {
    $("activate-confirm").focus();
    return setError(t("dashboard.activate.differ"));
  }
  const button = $("activate-submit");
  button.disabled = true;
  try {
    await mode.send(current, password);
  } catch (err) {
    setError(
      err.status === 404
        ? t(mode.unknown)
        : err.status === 409
          ? t(mode.expired)
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
  localize($("activate-title"), mode.title);
  localize($("activate-intro"), mode.intro);
  localize($("activate-submit"), mode.submit);
  localize($("activate-done-title"), mode.done);
  localize($("activate-done-text"), mode.doneText);
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
    localize(status, "dashboard.forgot.missingEmail");
    return;
  }
  const button = $("forgot-submit");
  button.disabled = true;
  try {
    const answer = await api.requestReset(email);
    plain(status, answer.message);
  } catch (err) {
    if (err.status === 404) localize(status, "dashboard.forgot.notSetUp");
    else plain(status, err.message);
  } finally {
    button.disabled = false;
  }
}

$("forgot-form")?.addEventListener("submit", onForgot);
