// Staff authentication on the dashboard.
//
// Everything else only needs `tokenStore.get()`: a bearer token for REST and the `?token=`
// parameter of /ws/proctor. Today the sign-in view asks for a staff token. When real logins
// exist, replace `obtainToken()` with a form that posts the credentials to the login endpoint
// and resolves with the token it returns; nothing else has to change.

const KEY = "realtime.staffToken";

function storage() {
  try {
    return globalThis.sessionStorage;
  } catch {
    return null;
  }
}

let memoryToken = null;

/** The staff token of this tab (sessionStorage: gone when the tab closes). */
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

/**
 * Show the sign-in view until the user provides a token that `verify(token)` accepts.
 *
 * @param {object} options
 * @param {(token: string) => Promise<void>} options.verify throws `{status: 401}` for a bad token
 * @param {string} [options.message] why sign-in is shown (e.g. the token expired)
 * @returns {Promise<string>} the accepted token (already stored)
 */
export function obtainToken({ verify, message }) {
  const form = document.getElementById("login-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");
  error.hidden = !message;
  error.textContent = message ?? "";
  input.value = "";
  input.focus();
  return new Promise((resolve) => {
    async function onSubmit(event) {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) {
        error.textContent = "Enter your staff token.";
        error.hidden = false;
        input.focus();
        return;
      }
      submit.disabled = true;
      tokenStore.set(token);
      try {
        await verify(token);
      } catch (err) {
        tokenStore.clear();
        error.textContent =
          err?.status === 401 ? "This token was not accepted. Check it and try again." : err.message;
        error.hidden = false;
        input.select();
        return;
      } finally {
        submit.disabled = false;
      }
      form.removeEventListener("submit", onSubmit);
      input.value = "";
      resolve(token);
    }
    form.addEventListener("submit", onSubmit);
  });
}
