// Staff authentication on the dashboard.
//
// Two ways to sign in:
//
// * A staff login (the default): the form posts the login and password to
//   `POST /api/v1/auth/login`; the server answers with an HttpOnly `realtime_token` cookie and a
//   readable `realtime_csrf` cookie. The page never sees the token: REST requests carry the
//   cookie, unsafe ones (POST/PATCH/PUT/DELETE) echo the CSRF cookie in `X-CSRF-Token`, and
//   /ws/proctor is authenticated by the same cookie (same origin), so no token lands in a URL.
// * A pasted staff token (the development token of `realtime serve --dev`, scripts): kept in
//   this tab's sessionStorage, sent as a bearer header over REST and, since browsers cannot set
//   headers on a WebSocket, as `?token=` on /ws/proctor (only in this mode).
//
// `session.me` is the caller as `GET /api/v1/auth/me` describes it (name, roles, permissions);
// the views offer only what `session.can(permission)` allows.

import { formatTime, t } from "/client/i18n.js";

const KEY = "realtime.staffToken";
export const CSRF_COOKIE = "realtime_csrf";

function storage() {
  try {
    return globalThis.sessionStorage;
  } catch {
    return null;
  }
}

let memoryToken = null;

/** The pasted staff token of this tab, if signed in that way (sessionStorage). */
export const tokenStore = {
  get() {
    return storage()?.getItem(KEY) ?? memoryToken;
  },
  set(token) {
    memoryToken = token;
    storage()?.setItem(KEY, token);
  },
  clear() {
    memoryToken = null;
    storage()?.removeItem(KEY);
  },
};

/** The value of a (non-HttpOnly) cookie. */
export function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

/** Who is signed in, and how. */
export const session = {
  /** @type {null|{id: string, name: string, kind: string, permissions: string[], groups: string[], unrestricted: boolean, roles: string[]}} */
  me: null,
  /** "cookie" (a staff login) or "token" (a pasted staff token) */
  get mode() {
    return tokenStore.get() ? "token" : "cookie";
  },
  can(permission) {
    return !!this.me?.permissions?.includes(permission);
  },
  /** Any of the permissions. */
  canAny(...permissions) {
    return permissions.some((p) => this.can(p));
  },
};

/** A readable "blocked until …" for a `login_blocked` answer. */
export function blockedText(blockedUntil) {
  return t("dashboard.login.blocked", { when: formatTime(blockedUntil, { seconds: false }) });
}

/**
 * Show the sign-in view until the user signs in (password or pasted token).
 *
 * @param {object} options
 * @param {(login: string, password: string) => Promise<void>} options.login posts the login;
 *   throws an ApiError (`status`, `code`, `data`)
 * @param {(token: string) => Promise<void>} options.verify checks a pasted token (stored
 *   already); throws `{status: 401}` for a bad one
 * @param {string} [options.message] why sign-in is shown (e.g. the session expired)
 * @param {"password"|"token"} [options.mode] which form to show first
 * @returns {Promise<void>} once signed in
 */
export function obtainLogin({ login, verify, message, mode = "password" }) {
  const $ = (id) => document.getElementById(id);
  const error = $("login-error");
  const forms = { password: $("login-form"), token: $("token-form") };

  function setError(text) {
    error.textContent = text ?? "";
    error.hidden = !text;
  }
  function switchTo(which, keepError = false) {
    forms.password.hidden = which !== "password";
    forms.token.hidden = which !== "token";
    if (!keepError) setError("");
    (which === "password" ? ($("login-name").value ? $("login-password") : $("login-name")) : $("token-input")).focus();
  }
  setError(message);
  $("login-password").value = "";
  $("token-input").value = "";
  switchTo(mode, true);

  return new Promise((resolve) => {
    const toToken = () => switchTo("token");
    const toPassword = () => switchTo("password");

    async function onPassword(event) {
      event.preventDefault();
      const name = $("login-name").value.trim();
      const password = $("login-password").value;
      if (!name || !password) {
        setError(t(!name ? "dashboard.login.missingLogin" : "dashboard.login.missingPassword"));
        (!name ? $("login-name") : $("login-password")).focus();
        return;
      }
      const submit = $("login-submit");
      submit.disabled = true;
      try {
        tokenStore.clear();
        await login(name, password);
      } catch (err) {
        if (err?.code === "login_blocked" && err.data?.blocked_until) {
          setError(blockedText(err.data.blocked_until));
        } else if (err?.status === 401) {
          setError(t("dashboard.login.wrongPassword"));
        } else if (err?.status === 403) {
          setError(t("dashboard.login.forbidden", { error: err.data?.message ?? err.message }));
        } else {
          setError(err?.message ?? String(err));
        }
        $("login-password").value = "";
        $("login-password").focus();
        return;
      } finally {
        submit.disabled = false;
      }
      done();
    }

    async function onToken(event) {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) {
        setError(t("dashboard.login.missingToken"));
        $("token-input").focus();
        return;
      }
      const submit = $("token-submit");
      submit.disabled = true;
      tokenStore.set(token);
      try {
        await verify(token);
      } catch (err) {
        tokenStore.clear();
        setError(err?.status === 401 ? t("dashboard.login.badToken") : err.message);
        $("token-input").select();
        return;
      } finally {
        submit.disabled = false;
      }
      done();
    }

    function done() {
      forms.password.removeEventListener("submit", onPassword);
      forms.token.removeEventListener("submit", onToken);
      $("use-token").removeEventListener("click", toToken);
      $("use-password").removeEventListener("click", toPassword);
      $("login-password").value = "";
      $("token-input").value = "";
      setError("");
      resolve();
    }

    forms.password.addEventListener("submit", onPassword);
    forms.token.addEventListener("submit", onToken);
    $("use-token").addEventListener("click", toToken);
    $("use-password").addEventListener("click", toPassword);
  });
}
