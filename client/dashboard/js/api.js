// REST client for /api/v1 (login cookie + CSRF header, or a pasted bearer token) and the
// server clock offset.

import { CSRF_COOKIE, readCookie, tokenStore } from "./auth.js";

import { errorText, t } from "/client/i18n.js";

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

export class ApiError extends Error {
  constructor(status, code, message, data = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.data = data; // the whole `error` object (e.g. `blocked_until`)
  }
}

/** The server's clock, estimated from the `Date` header of REST answers (±1 s). */
export const serverClock = {
  offset: 0,
  known: false,
  now() {
    return Date.now() + this.offset;
  },
  observe(response, sentAt) {
    const header = response.headers.get("date");
    if (!header) return;
    const server = Date.parse(header);
    if (Number.isNaN(server)) return;
    const local = (sentAt + Date.now()) / 2;
    // The header has whole seconds: the true time is in [server, server + 1000).
    const offset = server + 500 - local;
    if (!this.known || Math.abs(offset - this.offset) > 1500) this.offset = offset;
    else this.offset = this.offset * 0.8 + offset * 0.2;
    this.known = true;
  },
};

/** Listeners for a refused token (401): the app shows the sign-in view. */
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

/** Headers that authenticate a request: a bearer token, or (cookie) the CSRF echo. */
export function authHeaders(method = "GET") {
  const headers = {};
  const token = tokenStore.get();
  if (token) headers.Authorization = `Bearer ${token}`;
  else if (!SAFE.has(method)) {
    const csrf = readCookie(CSRF_COOKIE);
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  return headers;
}

/**
 * One JSON request. Throws ApiError. `quiet`: a 401 does not notify the sign-in listeners,
 * `anonymous`: no credentials at all (login, activation), `contentType`: a body sent as it is
 * (e.g. "text/csv") instead of as JSON.
 */
export async function request(method, path, body, { quiet = false, anonymous = false, contentType = "application/json" } = {}) {
  const headers = { Accept: "application/json", ...(anonymous ? {} : authHeaders(method)) };
  if (body !== undefined) headers["Content-Type"] = contentType;
  const sentAt = Date.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : contentType === "application/json" ? JSON.stringify(body) : body,
      credentials: anonymous ? "omit" : "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "network", t("dashboard.error.network"));
  }
  serverClock.observe(response, sentAt);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = data?.error ?? {};
    if (response.status === 401 && !quiet && !anonymous) for (const l of unauthorizedListeners) l(err.message);
    // The page's words for the code around the server's (English) message; `data.message` keeps
    // the server's own.
    const code = err.code ?? "http_error";
    throw new ApiError(response.status, code, errorText(code, err.message ?? response.statusText), err);
  }
  return data;
}

/** Download a CSV (or any file) with this tab's credentials, under `filename`. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: authHeaders("GET"), credentials: "same-origin" });
  if (!response.ok) throw new ApiError(response.status, "http_error", t("dashboard.error.download", { status: response.status }));
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Open a print-friendly report (HTML, fetched with this tab's credentials) in a new tab. */
export async function openPrintView(path) {
  const response = await fetch(path, { headers: authHeaders("GET"), credentials: "same-origin" });
  if (!response.ok) throw new ApiError(response.status, "http_error", t("dashboard.error.report", { status: response.status }));
  const url = URL.createObjectURL(await response.blob());
  window.open(url, "_blank", "noopener");
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

const enc = encodeURIComponent;

/** `?a=1&b=2` of the non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const api = {
  // identity
  login: (login, password) => request("POST", "/api/v1/auth/login", { login, password }, { quiet: true }),
  me: (opts) => request("GET", "/api/v1/auth/me", undefined, opts),
  logout: () => request("POST", "/api/v1/auth/logout", undefined, { quiet: true }),
  activate: (token, password) => request("POST", "/api/v1/auth/activate", { token, password }, { anonymous: true }),
  requestReset: (email) => request("POST", "/api/v1/auth/password-reset", { email }, { anonymous: true }),
  confirmReset: (token, password) =>
    request("POST", "/api/v1/auth/password-reset/confirm", { token, password }, { anonymous: true }),
  roles: () => request("GET", "/api/v1/roles"),
  users: (filters = {}) => request("GET", `/api/v1/users${query(filters)}`),
  createUser: (fields) => request("POST", "/api/v1/users", fields),
  updateUser: (id, fields) => request("PATCH", `/api/v1/users/${enc(id)}`, fields),
  userAction: (id, action) => request("POST", `/api/v1/users/${enc(id)}/${action}`),
  audit: (filters = {}) => request("GET", `/api/v1/audit${query(filters)}`),
  nodes: () => request("GET", "/api/v1/nodes"),
  // webhooks
  webhooks: () => request("GET", "/api/v1/webhooks"),
  createWebhook: (fields) => request("POST", "/api/v1/webhooks", fields),
  updateWebhook: (id, fields) => request("PATCH", `/api/v1/webhooks/${enc(id)}`, fields),
  deleteWebhook: (id) => request("DELETE", `/api/v1/webhooks/${enc(id)}`),
  testWebhook: (id) => request("POST", `/api/v1/webhooks/${enc(id)}/test`),
  webhookDeliveries: (id) => request("GET", `/api/v1/webhooks/${enc(id)}/deliveries`),
  retryWebhookDelivery: (id, deliveryId) =>
    request("POST", `/api/v1/webhooks/${enc(id)}/deliveries/${enc(deliveryId)}/retry`),
  // guests
  guestStatus: () => request("GET", "/api/v1/guests/status"),
  resizePool: (size) => request("PUT", "/api/v1/guests/pool", { size }),
  guestSessions: (examId) => request("GET", `/api/v1/exams/${enc(examId)}/guest-sessions`),
  reassignGuest: (examId, sessionId, body) =>
    request("POST", `/api/v1/exams/${enc(examId)}/guest-sessions/${enc(sessionId)}/reassign`, body),
  // exams and sessions
  listExams: (filters = {}) => request("GET", `/api/v1/exams${query(filters)}`),
  createExam: (fields) => request("POST", "/api/v1/exams", fields),
  updateExam: (examId, fields) => request("PATCH", `/api/v1/exams/${enc(examId)}`, fields),
  archiveExam: (examId, force = false) => request("DELETE", `/api/v1/exams/${enc(examId)}${force ? "?force=true" : ""}`),
  restoreExam: (examId) => request("POST", `/api/v1/exams/${enc(examId)}/restore`),
  /** One piece of a roster CSV (the header and some rows); `firstLine`: the line of its first row in the file. */
  importRoster: (examId, csvText, firstLine) =>
    request("POST", `/api/v1/exams/${enc(examId)}/roster?first_line=${firstLine}`, csvText, { contentType: "text/csv" }),
  exam: (examId) => request("GET", `/api/v1/exams/${encodeURIComponent(examId)}`),
  session: (examId, sessionId) =>
    request("GET", `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}`),
  /** A page of a session's history (`filters`: from, to, exclude, after_seq…), or the page at `next`. */
  history: (examId, sessionId, filters = {}, next = null) =>
    request(
      "GET",
      next ?? `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}/history${query(filters)}`,
    ),
  /** The reason category tree and the actions that must name a category. */
  reasonCategories: () => request("GET", "/api/v1/reason-categories"),
  reportIrregularity: (examId, sessionId, category, note) =>
    request(
      "POST",
      `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}/irregularities`,
      { category, note },
    ),
};
