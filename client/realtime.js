/**
 * realtime.js: the browser client of the realtime exam server.
 *
 * A dependency-free ES module for both WebSocket channels. It speaks the JSON subprotocol
 * (`realtime.v1.json`), reconnects by itself with exponential backoff and jitter, and stops for
 * good only on terminal close codes (4100 and up: superseded, terminated, completed, refused,
 * unauthorized, forbidden, unsupported protocol).
 *
 * - {@link CandidateConnection}: what an exam-delivery page embeds. Opens (and resumes) the
 *   candidate's session, keeps the resume token in `sessionStorage` (this tab only), answers
 *   pings, acknowledges every staff command, reports progress and client events, submits.
 * - {@link DashboardConnection}: what a proctor view embeds. Subscribes to one exam, keeps a
 *   live copy of every session (deltas are version-checked), recovers missed events after a
 *   reconnect (`events`) or resynchronises (`snapshot`), and sends commands whose promise
 *   resolves with the server's `command_result`.
 *
 * Both are `EventTarget`s; listen with `addEventListener(type, e => e.detail)`.
 *
 * @example
 * import { CandidateConnection } from "/client/realtime.js";
 * const conn = new CandidateConnection({ accessCode: "ABCD2345" });
 * conn.addEventListener("opened", (e) => showExam(e.detail.session, e.detail.exam));
 * conn.addEventListener("command", (e) => console.log("staff did", e.detail.action));
 * conn.addEventListener("ended", (e) => showFinalScreen(e.detail.reason));
 * conn.connect();
 * conn.progress(3, 2);
 *
 * @example
 * import { DashboardConnection } from "/client/realtime.js";
 * const dash = new DashboardConnection({ examId: "exam-1", token: staffToken });
 * dash.addEventListener("sync", () => renderAll(dash.sessions));
 * dash.addEventListener("change", (e) => patchRow(e.detail.session, e.detail.fields));
 * dash.connect();
 * const result = await dash.command("pause", { status: ["active"] }, { reason: "fire alarm" });
 *
 * @module realtime
 */

/** The WebSocket subprotocol this library speaks. */
export const SUBPROTOCOL = "realtime.v1.json";

/**
 * WebSocket close codes, mirroring `realtime/errors.py` `CloseCode`.
 * 4000–4099: the client may reconnect; 4100–4199 and 44xx: it must not.
 * @readonly
 * @enum {number}
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006, // set by the browser when the connection dropped without a close frame
  MESSAGE_TOO_BIG: 1009,
  TRY_AGAIN_LATER: 1013, // the server cannot reach its state store right now; reconnect
  SLOW_CONSUMER: 4008, // the send queue overflowed; reconnect and resynchronise
  PING_TIMEOUT: 4009, // no answer to pings; reconnect
  RESYNC: 4010, // the server missed events; reconnect with last_seq
  RATE_LIMITED: 4029, // too many messages (or wrong access codes): reconnect after the backoff
  SUPERSEDED: 4100, // another connection took the session over
  TERMINATED: 4101, // staff terminated the session
  COMPLETED: 4102, // the candidate submitted
  REFUSED: 4103, // the open was refused (a `refused` message says why)
  UNAUTHORIZED: 4401, // bad or missing credentials
  FORBIDDEN: 4403, // origin or permission refused
  UNSUPPORTED_PROTOCOL: 4406, // no supported subprotocol offered
});

/**
 * Whether a close code allows an automatic reconnect (the server's `CloseCode.may_reconnect`).
 * @param {number} code
 * @returns {boolean}
 */
export function mayReconnect(code) {
  return code < 4100;
}

/** Connection states, in the `state` event and the `state` property. */
export const State = Object.freeze({
  IDLE: "idle", // not started (or closed by the application)
  CONNECTING: "connecting", // the first attempt is under way
  OPEN: "open", // the socket is open and the session/subscription is live
  RECONNECTING: "reconnecting", // the socket dropped; a retry is scheduled or under way
  CLOSED: "closed", // stopped for good (terminal close code); `connect()` starts again
});

/**
 * Exponential backoff with jitter: the n-th delay is `min(max, initial * factor^n)`, of which
 * the `jitter` fraction is random, so many clients dropped at once do not return at once.
 */
export class Backoff {
  /**
   * @param {{initial?: number, max?: number, factor?: number, jitter?: number,
   *          random?: () => number}} [options] delays in milliseconds
   */
  constructor({ initial = 500, max = 15000, factor = 2, jitter = 0.5, random = Math.random } = {}) {
    Object.assign(this, { initial, max, factor, jitter, random });
    this.attempt = 0;
  }

  /** The next delay in milliseconds; each call backs off further. */
  next() {
    const base = Math.min(this.max, this.initial * this.factor ** this.attempt);
    this.attempt += 1;
    return Math.round(base * (1 - this.jitter) + base * this.jitter * this.random());
  }

  /** Start again from the initial delay (after a successful open). */
  reset() {
    this.attempt = 0;
  }
}

/** A random id of `bytes` random bytes as hex (works without a secure context). */
export function randomId(bytes = 8) {
  const data = new Uint8Array(bytes);
  crypto.getRandomValues(data);
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

function defaultUrl(path) {
  const { protocol, host } = globalThis.location;
  return `${protocol === "https:" ? "wss:" : "ws:"}//${host}${path}`;
}

function memoryStorage() {
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? memoryStorage();
  } catch {
    return memoryStorage(); // storage disabled (privacy settings, sandboxed frame)
  }
}

/** An error from the server (`error` message) or from the connection. */
export class RealtimeError extends Error {
  /**
   * @param {string} code an `ErrorCode` of the server, or `connection_lost`, `timeout`,
   *   `not_connected`
   * @param {string} message
   * @param {object} [data] the whole `error` message
   */
  constructor(code, message, data = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.data = data;
  }
}

/**
 * What both connections share: the socket, the JSON codec, reconnects and state events.
 *
 * Events:
 * - `state` `{state, previous, code?, reason?, retryIn?, attempt?}`: the connection state changed.
 * - `message` `{message}`: every decoded message from the server (for logging, extensions).
 * - `close` `{code, reason, reconnect}`: the socket closed; `reconnect` says if a retry follows.
 * - `error` `{code, message, ...}`: an `error` message from the server.
 */
export class RealtimeConnection extends EventTarget {
  /**
   * @param {string} url the WebSocket URL
   * @param {object} [options]
   * @param {object} [options.backoff] {@link Backoff} options
   * @param {number} [options.openTimeout=10000] ms before a hanging handshake is retried
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (tests)
   */
  constructor(url, { backoff = {}, openTimeout = 10000, WebSocket: Impl } = {}) {
    super();
    this.url = url;
    this.backoff = new Backoff(backoff);
    this.openTimeout = openTimeout;
    this.WebSocketImpl = Impl ?? globalThis.WebSocket;
    /** @type {string} one of {@link State} */
    this.state = State.IDLE;
    /** The code of the last close, if any. */
    this.lastClose = null;
    /** How many times the socket was re-opened after a drop. */
    this.reconnects = 0;
    this._ws = null;
    this._wanted = false;
    this._retryTimer = null;
    this._openTimer = null;
    this._everOpened = false;
    this._onOnline = () => {
      if (this._wanted && this.state === State.RECONNECTING && this._retryTimer) this.retryNow();
    };
  }

  /** Start connecting (or restart after `close()` or a terminal close). */
  connect() {
    this._wanted = true;
    globalThis.addEventListener?.("online", this._onOnline);
    if (this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._open();
  }

  /** Close for good (no reconnect). State kept (e.g. `lastSeq`), so `connect()` resumes. */
  close(code = CloseCode.NORMAL, reason = "closed by the client") {
    this._wanted = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState <= 1) ws.close(code, reason);
    this._handleStop();
    this._setState(State.IDLE, { code, reason });
  }

  /**
   * Drop the socket as a network failure would, then reconnect as usual. For tests and for a
   * "reconnect now" button.
   */
  dropSocket() {
    const ws = this._ws;
    if (!ws) return;
    this._detach();
    if (ws.readyState <= 1) ws.close(4000, "dropped by the client");
    this._closed(CloseCode.ABNORMAL, "dropped by the client");
  }

  /** Skip the rest of the backoff delay and reconnect now. */
  retryNow() {
    if (!this._wanted || this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._open();
  }

  /** Whether the socket is open. */
  get connected() {
    return this._ws?.readyState === 1;
  }

  /**
   * Send one message now. Returns false when the socket is not open (nothing is queued).
   * @param {object} message with a `type`
   */
  send(message) {
    if (!this.connected) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  // -- for subclasses ---------------------------------------------------------------------

  /** The socket opened: send the first message (`open`, `subscribe`). */
  _handleOpen() {}

  /** @param {object} message */
  _handleMessage(message) {} // eslint-disable-line no-unused-vars

  /** The socket closed with `code`; return false to stop reconnecting. */
  _handleClose(code, reason) { // eslint-disable-line no-unused-vars
    return mayReconnect(code);
  }

  /** The application called `close()`: drop per-connection state. */
  _handleStop() {}

  /** The URL of the next attempt (subclasses may add parameters). */
  _socketUrl() {
    return this.url;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    if (previous === state && !extra.force) return;
    this.state = state;
    this._emit("state", { state, previous, ...extra });
  }

  // -- internals --------------------------------------------------------------------------

  _open() {
    let ws;
    this._setState(this._everOpened || this.backoff.attempt ? State.RECONNECTING : State.CONNECTING, {
      attempt: this.backoff.attempt,
    });
    try {
      ws = new this.WebSocketImpl(this._socketUrl(), [SUBPROTOCOL]);
    } catch (err) {
      this._closed(CloseCode.ABNORMAL, String(err));
      return;
    }
    this._ws = ws;
    this._openTimer = setTimeout(() => {
      if (this._ws === ws && ws.readyState === 0) this.dropSocket();
    }, this.openTimeout);
    ws.onopen = () => {
      clearTimeout(this._openTimer);
      if (this._everOpened) this.reconnects += 1;
      this._everOpened = true;
      this._handleOpen();
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not JSON: ignore (the server only sends JSON on this subprotocol)
      }
      if (!message || typeof message.type !== "string") return;
      this._emit("message", { message });
      this._handleMessage(message);
    };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._detach();
      this._closed(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event always follows
  }

  _detach() {
    clearTimeout(this._openTimer);
    const ws = this._ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    this._ws = null;
  }

  _closed(code, reason) {
    this.lastClose = { code, reason };
    const again = this._wanted && this._handleClose(code, reason);
    this._emit("close", { code, reason, reconnect: again });
    if (!again) {
      this._wanted = false;
      this._setState(State.CLOSED, { code, reason });
      return;
    }
    const delay = this.backoff.next();
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._wanted) this._open();
    }, delay);
    this._setState(State.RECONNECTING, {
      code,
      reason,
      retryIn: delay,
      retryAt: Date.now() + delay,
      attempt: this.backoff.attempt,
      force: true,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Candidate
// ---------------------------------------------------------------------------------------------

const CLIENT_ID_KEY = "realtime.client_id";

/**
 * A candidate's connection to `/ws/candidate`.
 *
 * Events (`e.detail`):
 * - `opened` `{session, exam, relocked, resumed}`: the session is open (again, after a reconnect).
 * - `session` `{session, fields}`: the session changed (status, locked, deadline, ...).
 * - `command` `{command_id, action, details, session, at}`: a staff command arrived; it has
 *   already been acknowledged when listeners run (`action`: authorize, pause, resume, lock,
 *   unlock, terminate, extend (`details.minutes`), notice (`details.text`), acknowledge_hand).
 *   After a reopen, a notice, pause/resume or lock/unlock applied while the page was away is
 *   emitted again with `replayed: true` (and acknowledged).
 * - `hand_raised` `{at}`: the server recorded this page's {@link CandidateConnection#raiseHand}.
 * - `refused` `{reason, message}`: the open was refused (`locked`, `already_open`, `closed`,
 *   `not_found`, `outside_window`). No automatic retry; call `connect()` to try again.
 * - `submitted` `{status}`: the submission was accepted.
 * - `ended` `{reason, code}`: the connection stopped for good: `terminated`, `completed`,
 *   `superseded` (opened elsewhere), `refused`, or `closed` (another terminal code).
 * - `state`, `close`, `error`, `message`: see {@link RealtimeConnection}.
 */
export class CandidateConnection extends RealtimeConnection {
  /**
   * @param {object} options
   * @param {string} [options.accessCode] the candidate's access code
   * @param {string} [options.token] or a signed candidate token (from the sessions REST API),
   *   or a candidate's login token together with `examId`
   * @param {string} [options.examId] the exam to open with a login token (the session is
   *   created on the first open)
   * @param {string} [options.url] WebSocket URL; default `/ws/candidate` on this host
   * @param {Storage} [options.storage=sessionStorage] where the resume token is kept
   * @param {string} [options.clientId] identifies this tab/device; default: random, per tab
   * @param {number} [options.idleTimeout=30000] ms without any message (the server pings every
   *   few seconds) after which the connection is considered dead and re-opened
   * @param {object} [options.backoff] {@link Backoff} options
   */
  constructor({ accessCode, token, examId, url, storage, clientId, idleTimeout = 30000, ...rest } = {}) {
    if (!accessCode && !token) throw new TypeError("CandidateConnection needs accessCode or token");
    super(url ?? defaultUrl("/ws/candidate"), rest);
    this.accessCode = accessCode ? String(accessCode).trim().toUpperCase() : null;
    this.token = token ?? null;
    this.examId = examId ?? null;
    this.storage = storage ?? defaultStorage();
    this.clientId = clientId ?? this.storage.getItem(CLIENT_ID_KEY) ?? randomId(8);
    this.storage.setItem(CLIENT_ID_KEY, this.clientId);
    this.idleTimeout = idleTimeout;
    /** The session as last seen (public fields: status, locked, deadline, position, ...). */
    this.session = null;
    /** `{id, title, duration_minutes, requires_authorization}` */
    this.exam = null;
    /** Server clock minus local clock, in ms (from `opened.server_time`). */
    this.serverOffset = 0;
    /** True between `opened` and the socket closing. */
    this.isOpen = false;
    this._pendingProgress = null;
    this._pendingEvents = [];
    this._submitWaiters = [];
    this._idleTimer = null;
    this._ended = null;
  }

  /** The sessionStorage key of this session's resume token. */
  get resumeKey() {
    return `realtime.resume.${this.accessCode ?? this.token.slice(-24)}`;
  }

  /** The stored resume token, if any. */
  get resumeToken() {
    return this.storage.getItem(this.resumeKey);
  }

  /** Forget the resume token: the next open is a fresh open (needs an unlock if locked). */
  forgetResumeToken() {
    this.storage.removeItem(this.resumeKey);
  }

  /** Server time now, in ms since the epoch. */
  now() {
    return Date.now() + this.serverOffset;
  }

  /**
   * Milliseconds left until the deadline (frozen while paused), or null before the start.
   * @returns {number|null}
   */
  timeLeft() {
    const s = this.session;
    if (!s || s.deadline == null) return null;
    const at = s.status === "paused" && s.paused_at != null ? s.paused_at * 1000 : this.now();
    return Math.max(0, s.deadline * 1000 - at);
  }

  connect() {
    this._ended = null;
    super.connect();
  }

  /**
   * Report the candidate's position and number of answered items. Coalesced: while the
   * connection is down only the latest report is kept and sent after the reopen.
   */
  progress(position, answered) {
    this._pendingProgress = { position, answered };
    this._flush();
  }

  /**
   * Report something the page noticed (`focus_lost`, `fullscreen_exit`, ...). Queued while the
   * connection is down (at most 50).
   */
  clientEvent(name, detail = "") {
    this._pendingEvents.push({ type: "client_event", name: String(name).slice(0, 64), detail: String(detail).slice(0, 500) });
    if (this._pendingEvents.length > 50) this._pendingEvents.shift();
    this._flush();
  }

  /**
   * Ask for a proctor. The server answers `hand_raised` (emitted as `hand_raised`); staff
   * acknowledge it with the `acknowledge_hand` command (emitted as `command`). Returns false
   * when not connected (nothing is queued: the candidate presses again).
   */
  raiseHand() {
    return this.isOpen && this.send({ type: "raise_hand" });
  }

  /**
   * Submit the exam. Resolves when the server accepted it (the connection then ends with
   * reason `completed`); rejects with a {@link RealtimeError} otherwise.
   * @returns {Promise<void>}
   */
  submit() {
    if (!this.isOpen) return Promise.reject(new RealtimeError("not_connected", "not connected"));
    return new Promise((resolve, reject) => {
      this._submitWaiters.push({ resolve, reject });
      this.send({ type: "submit" });
    });
  }

  _flush() {
    if (!this.isOpen) return;
    if (this._pendingProgress) {
      if (this.send({ type: "progress", ...this._pendingProgress })) this._pendingProgress = null;
    }
    while (this._pendingEvents.length && this.send(this._pendingEvents[0])) {
      this._pendingEvents.shift();
    }
  }

  _touch() {
    clearTimeout(this._idleTimer);
    if (this.idleTimeout > 0) {
      this._idleTimer = setTimeout(() => this.dropSocket(), this.idleTimeout);
    }
  }

  _handleOpen() {
    this._touch();
    const open = { type: "open", client_id: this.clientId };
    if (this.token) open.token = this.token;
    else open.access_code = this.accessCode;
    if (this.token && this.examId) open.exam_id = this.examId;
    const resume = this.resumeToken;
    if (resume) open.resume_token = resume;
    this.send(open);
  }

  _handleMessage(m) {
    this._touch();
    switch (m.type) {
      case "ping":
        this.send({ type: "pong", t: m.t });
        break;
      case "opened": {
        const resumed = this.session != null;
        this.session = { ...m.session };
        this.exam = m.exam;
        if (typeof m.server_time === "number") this.serverOffset = m.server_time * 1000 - Date.now();
        if (m.resume_token) this.storage.setItem(this.resumeKey, m.resume_token);
        this.isOpen = true;
        this.backoff.reset();
        this._setState(State.OPEN);
        this._emit("opened", { session: this.session, exam: this.exam, relocked: !!m.relocked, resumed });
        this._emit("session", { session: this.session, fields: Object.keys(m.session) });
        if (m.session.notice && m.session.notice_id) {
          // A notice sent while this page was away: show it now, and acknowledge it.
          this.send({ type: "ack", command_id: m.session.notice_id });
          this._emit("command", {
            type: "command", action: "notice", command_id: m.session.notice_id,
            details: { text: m.session.notice }, session: this.session, replayed: true,
          });
        }
        // A pause/resume or lock/unlock applied while this page was away (or whose ack was
        // lost): the page shows its state now (the listeners above rendered it), so it is
        // acknowledged, and the proctor sees the queued command `delivered`.
        const replays = [
          ["status_command_id", m.session.status === "paused" ? "pause" : "resume"],
          ["lock_command_id", m.session.locked ? "lock" : "unlock"],
        ];
        for (const [field, action] of replays) {
          const id = m.session[field];
          if (!id) continue;
          this._emit("command", { type: "command", action, command_id: id, details: {}, session: this.session, replayed: true });
          this.send({ type: "ack", command_id: id });
        }
        this._flush();
        break;
      }
      case "state": // the server noticed this page may have missed a change: the whole state
        if (this.session) {
          Object.assign(this.session, m.session);
          this._emit("session", { session: this.session, fields: Object.keys(m.session) });
        }
        break;
      case "command": {
        const changes = m.session ?? {};
        if (this.session && Object.keys(changes).length) {
          const v = changes.version;
          if (v == null || this.session.version == null || v >= this.session.version) {
            Object.assign(this.session, changes);
          }
        }
        if (m.command_id) this.send({ type: "ack", command_id: m.command_id });
        this._emit("command", { ...m, session: this.session });
        if (Object.keys(changes).length) this._emit("session", { session: this.session, fields: Object.keys(changes) });
        break;
      }
      case "hand_raised": // our raise_hand is recorded; a proctor acknowledges it later
        if (this.session) {
          Object.assign(this.session, { hand_raised: true, hand_raised_at: m.at, hand_acked_at: null, hand_acked_by: "" });
          this._emit("session", { session: this.session, fields: ["hand_raised"] });
        }
        this._emit("hand_raised", { at: m.at });
        break;
      case "refused":
        this._ended = "refused";
        this._emit("refused", { reason: m.reason, message: m.message });
        break;
      case "superseded":
        this._ended = "superseded";
        break;
      case "submitted":
        this._ended = "completed";
        if (this.session) this.session.status = m.status ?? "completed";
        for (const w of this._submitWaiters.splice(0)) w.resolve();
        this._emit("submitted", { status: m.status });
        break;
      case "error":
        if (m.request === "submit") {
          for (const w of this._submitWaiters.splice(0)) w.reject(new RealtimeError(m.code, m.message, m));
        }
        this._emit("error", m);
        break;
      default:
        break;
    }
  }

  _handleStop() {
    clearTimeout(this._idleTimer);
    this.isOpen = false;
    for (const w of this._submitWaiters.splice(0)) {
      w.reject(new RealtimeError("connection_lost", "the connection closed before the server answered"));
    }
  }

  _handleClose(code, reason) {
    this._handleStop();
    if (mayReconnect(code) && this._ended == null) return true;
    const reason_ =
      this._ended ??
      {
        [CloseCode.TERMINATED]: "terminated",
        [CloseCode.COMPLETED]: "completed",
        [CloseCode.SUPERSEDED]: "superseded",
        [CloseCode.REFUSED]: "refused",
      }[code] ??
      "closed";
    if (reason_ === "terminated" || reason_ === "completed") {
      this.forgetResumeToken();
      if (this.session) this.session.status = reason_;
    }
    this._emit("ended", { reason: reason_, code, message: reason });
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

/**
 * A proctor's connection to `/ws/proctor`, subscribed to one exam.
 *
 * It keeps `sessions` (a Map of session id to the session's public fields) up to date:
 * every delta's `changes` are applied unless the session already has a newer `version`.
 *
 * Events (`e.detail`):
 * - `sync` `{mode, exam, seq, missed}`: the view is complete again. `mode` is `snapshot` (all
 *   sessions were replaced; re-read `sessions`) or `events` (the `missed` events were replayed
 *   as `change`/`event` events first).
 * - `change` `{session, fields, event, created}`: one session changed; `fields` lists the keys
 *   whose values differ from before.
 * - `event` `{event}`: every applied delta (history entry: kind, actor, details, before/after).
 * - `delivered` `{session_id, command_id, event}`: a candidate acknowledged a command.
 * - `alert` `{alert, event}`: a hall-wide drop alert (`alert.id`, `count`, `window_seconds`,
 *   `groups`, `sessions`): live (`event` set) or still active when the snapshot was taken
 *   (`event` null). The same alert may arrive both ways: tell them apart by `alert.id`.
 * - `unauthorized` `{message}`: the token was refused (terminal; obtain a new token, then
 *   `setToken()` and `connect()`).
 * - `state`, `close`, `error`, `message`: see {@link RealtimeConnection}.
 */
export class DashboardConnection extends RealtimeConnection {
  /**
   * @param {object} options
   * @param {string} options.examId the exam to watch
   * @param {string} [options.token] staff token; without it the `realtime_token` cookie is used
   * @param {string} [options.url] WebSocket URL; default `/ws/proctor` on this host
   * @param {number} [options.commandTimeout=30000] ms before a command promise rejects
   * @param {number} [options.heartbeat=15000] ms between pings that detect a dead socket (0: off)
   * @param {object} [options.backoff] {@link Backoff} options
   */
  constructor({ examId, token, url, commandTimeout = 30000, heartbeat = 15000, ...rest } = {}) {
    super(url ?? defaultUrl("/ws/proctor"), rest);
    this.examId = examId;
    this.token = token ?? null;
    this.commandTimeout = commandTimeout;
    this.heartbeat = heartbeat;
    /** @type {Map<string, object>} */
    this.sessions = new Map();
    /** The exam, from the last snapshot. */
    this.exam = null;
    /** The exam sequence number of the last event applied (null before the first snapshot). */
    this.lastSeq = null;
    /** True once subscribed and synchronised, until the socket drops. */
    this.synced = false;
    /** How the last (re)subscription synchronised: `snapshot` or `events`. */
    this.lastSync = null;
    /** Round-trip time of the last heartbeat, ms. */
    this.rttMs = null;
    this._requests = new Map();
    this._nextRequest = 1;
    this._waiting = [];
    this._beatTimer = null;
    this._beatSent = null;
  }

  /** Use another staff token from the next connection on. */
  setToken(token) {
    this.token = token;
  }

  /**
   * Watch another exam: forgets the current sessions and subscribes anew.
   * @param {string} examId
   */
  subscribe(examId) {
    this.examId = examId;
    this.sessions = new Map();
    this.exam = null;
    this.lastSeq = null;
    this.synced = false;
    if (this.connected) this._subscribe();
  }

  /**
   * Send a staff command over the socket.
   *
   * @param {string} action authorize | pause | resume | lock | unlock | terminate | extend | notice
   * @param {string|string[]|object} target a session id, a list of ids, `"all"`, or a filter
   *   `{status: [...], group, search, session_ids}` evaluated by the server
   * @param {{reason?: string, minutes?: number, text?: string, command_id?: string}} [params]
   * @returns {Promise<{command_id: string, action: string,
   *   applied: {session_id: string, seq: number, delivery: "sent"|"queued"}[],
   *   skipped: {session_id: string, reason: string, message: string}[]}>}
   *   resolves on `command_result`; rejects with a {@link RealtimeError} on `error`, on a
   *   timeout, or when the connection drops first (then the command may or may not have been
   *   applied; the next sync shows it)
   */
  command(action, target, params = {}) {
    if (!this._wanted) {
      return Promise.reject(new RealtimeError("not_connected", "the connection is closed"));
    }
    const request_id = `r${this._nextRequest++}`;
    const command_id = params.command_id ?? randomId(8);
    const message = { type: "command", request_id, action, target, ...params, command_id };
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, message, timer: null, sent: false };
      entry.timer = setTimeout(() => {
        this._requests.delete(request_id);
        this._waiting = this._waiting.filter((e) => e !== entry);
        reject(new RealtimeError("timeout", "the server did not answer in time", { command_id }));
      }, this.commandTimeout);
      this._requests.set(request_id, entry);
      if (this.synced) this._sendCommand(entry);
      else this._waiting.push(entry); // sent once subscribed again
    });
  }

  _sendCommand(entry) {
    entry.sent = this.send(entry.message);
    if (!entry.sent) this._waiting.push(entry);
  }

  _socketUrl() {
    if (!this.token) return this.url;
    const sep = this.url.includes("?") ? "&" : "?";
    return `${this.url}${sep}token=${encodeURIComponent(this.token)}`;
  }

  _subscribe() {
    const message = { type: "subscribe", exam_id: this.examId };
    if (this.lastSeq != null) message.last_seq = this.lastSeq;
    this.send(message);
  }

  _handleOpen() {
    this._subscribe();
    this._startHeartbeat();
  }

  _startHeartbeat() {
    clearInterval(this._beatTimer);
    this._beatSent = null;
    if (!this.heartbeat) return;
    this._beatTimer = setInterval(() => {
      if (this._beatSent != null && Date.now() - this._beatSent > this.heartbeat) {
        this.dropSocket(); // no pong for a whole interval: the socket is dead
        return;
      }
      if (this._beatSent == null) {
        this._beatSent = Date.now();
        this.send({ type: "ping", t: this._beatSent / 1000 });
      }
    }, this.heartbeat);
  }

  _handleMessage(m) {
    switch (m.type) {
      case "snapshot":
        this._applySnapshot(m);
        break;
      case "events":
        for (const event of m.events) this._applyEvent(event);
        if (typeof m.seq === "number" && (this.lastSeq == null || m.seq > this.lastSeq)) this.lastSeq = m.seq;
        this._synced("events", { missed: m.events.length });
        break;
      case "event":
        if (this.synced) this._applyEvent(m.event);
        break;
      case "event_batch": // a burst of live deltas (e.g. a bulk command), in sequence order
        if (this.synced) for (const event of m.events) this._applyEvent(event);
        break;
      case "command_result": {
        const entry = this._requests.get(m.request_id);
        if (entry) {
          this._requests.delete(m.request_id);
          clearTimeout(entry.timer);
          entry.resolve(m);
        }
        this._emit("command_result", m);
        break;
      }
      case "pong":
        if (this._beatSent != null) this.rttMs = Date.now() - this._beatSent;
        this._beatSent = null;
        break;
      case "error": {
        const entry = m.request_id != null ? this._requests.get(m.request_id) : null;
        if (entry) {
          this._requests.delete(m.request_id);
          clearTimeout(entry.timer);
          entry.reject(new RealtimeError(m.code, m.message, m));
        }
        if (m.code === "unauthorized") this._emit("unauthorized", { message: m.message });
        this._emit("error", m);
        break;
      }
      default:
        break;
    }
  }

  _applySnapshot(m) {
    const sessions = new Map();
    for (const s of m.sessions) sessions.set(s.id, s);
    this.sessions = sessions;
    this.exam = m.exam;
    this.lastSeq = m.seq;
    for (const alert of m.alerts ?? []) this._emit("alert", { alert, event: null });
    this._synced("snapshot", { missed: null });
  }

  _synced(mode, extra) {
    this.synced = true;
    this.lastSync = mode;
    this.backoff.reset();
    this._setState(State.OPEN);
    this._emit("sync", { mode, exam: this.exam, seq: this.lastSeq, ...extra });
    for (const entry of this._waiting.splice(0)) this._sendCommand(entry);
  }

  _applyEvent(event) {
    if (this.lastSeq != null && event.seq <= this.lastSeq) return; // already applied
    this.lastSeq = event.seq;
    const changes = event.changes ?? {};
    let session = this.sessions.get(event.session_id);
    let fields = [];
    let created = false;
    if (!session) {
      if (changes.id && changes.candidate_name != null) {
        session = { ...changes };
        this.sessions.set(session.id, session);
        fields = Object.keys(session);
        created = true;
      }
    } else {
      const v = changes.version;
      if (v == null || session.version == null || v >= session.version) {
        for (const [key, value] of Object.entries(changes)) {
          if (session[key] !== value) {
            session[key] = value;
            fields.push(key);
          }
        }
      }
    }
    if (fields.length) this._emit("change", { session, fields, event, created });
    this._emit("event", { event, session: session ?? null });
    if (event.kind === "delivered" && event.details?.command_id) {
      this._emit("delivered", { session_id: event.session_id, command_id: event.details.command_id, event });
    }
    if (event.kind === "drop_alert") this._emit("alert", { alert: event.details, event });
  }

  _dropRequests(all) {
    clearInterval(this._beatTimer);
    this.synced = false;
    for (const [id, entry] of this._requests) {
      if (!entry.sent && !all) continue; // not sent yet: it waits for the next subscription
      this._requests.delete(id);
      clearTimeout(entry.timer);
      entry.reject(
        entry.sent
          ? new RealtimeError(
              "connection_lost",
              "the connection dropped before the server answered; the command may have been applied",
              { command_id: entry.message.command_id },
            )
          : new RealtimeError("not_connected", "the connection is closed"),
      );
    }
    if (all) this._waiting = [];
  }

  _handleStop() {
    this._dropRequests(true);
  }

  _handleClose(code, reason) {
    const again = mayReconnect(code);
    this._dropRequests(!again);
    if (code === CloseCode.UNAUTHORIZED) {
      this._emit("unauthorized", { message: reason || "a valid staff token is required" });
    }
    return again;
  }
}
