// REST client for /api/v1 with the staff token, and the server clock offset.

import { tokenStore } from "./auth.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
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

export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = tokenStore.get();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const sentAt = Date.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "network", "The server cannot be reached. Check the network and try again.");
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
    if (response.status === 401) for (const l of unauthorizedListeners) l(err.message);
    throw new ApiError(response.status, err.code ?? "http_error", err.message ?? response.statusText);
  }
  return data;
}

export const api = {
  listExams: () => request("GET", "/api/v1/exams"),
  exam: (examId) => request("GET", `/api/v1/exams/${encodeURIComponent(examId)}`),
  session: (examId, sessionId) =>
    request("GET", `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}`),
  history: (examId, sessionId) =>
    request(
      "GET",
      `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}/history`,
    ),
  reportIrregularity: (examId, sessionId, category, note) =>
    request(
      "POST",
      `/api/v1/exams/${encodeURIComponent(examId)}/sessions/${encodeURIComponent(sessionId)}/irregularities`,
      { category, note },
    ),
};
