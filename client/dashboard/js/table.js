// The live sessions table.
//
// Every session has one Row (its <tr> and the HTML last written to each cell). A change marks
// its row dirty; one requestAnimationFrame flush per frame applies everything pending: it
// re-filters/re-sorts only when a field that matters for the current filter or sort changed,
// and rewrites only the cells whose content differs. The body is virtualised: only the rows in
// view (plus an overscan) are attached, between two spacer rows that keep the scroll height, so
// the browser lays out a few dozen rows whatever the size of the exam. Rows that change while
// detached are re-rendered when they scroll into view. The clock-driven cells (time left, last
// seen) tick once a second for the attached rows only. For printing (beforeprint, or print
// media) every shown row is attached, in order, until printing ends.

import { t } from "/client/i18n.js";
import { actionLabel, ago, alertLabel, duration, esc, statusLabel } from "./format.js";
import { indicatorLevels, offlineSeconds } from "./indicators.js";
import { incidentCell, incidentSort } from "./incidents.js";

export const STATUSES = ["ready", "awaiting", "active", "paused", "completed", "terminated"];
const STATUS_RANK = Object.fromEntries(STATUSES.map((s, i) => [s, i]));
const LIVE_STATUSES = new Set(["awaiting", "active", "paused"]);

/** Started, not finished, and no connection: the proctor must see this at once. */
export function isOffline(s) {
  return !s.connected && LIVE_STATUSES.has(s.status);
}

/** Milliseconds left (frozen while paused), or null when there is no deadline yet. */
export function timeLeft(s, nowMs) {
  if (s.deadline == null || s.status === "completed" || s.status === "terminated") return null;
  const at = s.status === "paused" && s.paused_at != null ? s.paused_at * 1000 : nowMs;
  const left = s.deadline * 1000 - at;
  // The server clock is estimated to ±0.5 s: never show more than the time allowed.
  return s.started_at != null ? Math.min(left, (s.deadline - s.started_at) * 1000) : left;
}

/** Natural order ("Candidate 2" before "Candidate 10"), case- and accent-insensitive. */
export const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" }).compare;

const HAND_ICON =
  `<svg aria-hidden="true" viewBox="0 0 24 24" width="15" height="15" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"><path d="M8 12V6.5a1.5 1.5 0 0 1 3 0V11M11 10V5a1.5 1.5 0 0 1 3 0v6M14 10V6.5a1.5 1.5 0 0 1 3 0V14a6 6 0 0 1-6 6h-.5a6 6 0 0 1-4.8-2.4L4 15.2a1.5 1.5 0 0 1 2.3-1.9L8 15"/></svg>`;

/** A level mark for an indicator value: a class and a tooltip when over a threshold.
 * `what` is the indicator's catalogue key. */
function mark(row, name, text, what) {
  const level = row.levels?.[name] ?? "ok";
  if (level === "ok") return text;
  const title = t("dashboard.indicator.title", { what: t(what), level: t(`dashboard.indicator.level.${level}`) });
  return `<span class="ind ind-${level}" title="${esc(title)}">${text}</span>`;
}

/** A command's delivery state in words (dashboard.delivery.<state>). */
function deliveryText(state) {
  const key = `dashboard.delivery.${state}`;
  const text = t(key);
  return text === key ? state : text;
}

/** Columns: how to render a cell, and what to sort by. */
const COLUMNS = {
  select: {
    // Not re-rendered: the checkbox keeps its focus; `_renderRow` sets `checked` and the label.
    render: null,
  },
  candidate: {
    fields: ["candidate_name", "candidate_id"],
    sort: (s) => `${s.candidate_name}\u0000${s.id}`,
    render: (s) =>
      `<button type="button" class="cand" data-open="${esc(s.id)}">${esc(s.candidate_name)}</button>` +
      `<span class="sub mono">${esc(s.candidate_id)}</span>`,
  },
  group: {
    fields: ["group"],
    sort: (s) => s.group,
    render: (s) => (s.group ? esc(s.group) : `<span class="muted">—</span>`),
  },
  status: {
    fields: ["status"],
    sort: (s) => STATUS_RANK[s.status] ?? 99,
    render: (s) => `<span class="badge st-${esc(s.status)}">${esc(statusLabel(s.status))}</span>`,
  },
  locked: {
    fields: ["locked"],
    sort: (s) => (s.locked ? 0 : 1),
    render: (s) =>
      s.locked
        ? `<span class="lock on" title="${esc(t("dashboard.table.lockedTitle"))}"><svg aria-hidden="true" viewBox="0 0 16 16"><path d="M4 7V5a4 4 0 1 1 8 0v2h.5A1.5 1.5 0 0 1 14 8.5v5a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 2 13.5v-5A1.5 1.5 0 0 1 3.5 7H4zm2 0h4V5a2 2 0 1 0-4 0v2z"/></svg>${esc(t("dashboard.table.locked"))}</span>`
        : `<span class="lock off">${esc(t("dashboard.table.unlocked"))}</span>`,
  },
  connection: {
    fields: ["connected", "status", "rtt_ms", "reconnects"],
    sort: (s) => (isOffline(s) ? 0 : s.connected ? 1 : 2),
    render: (s, row) => {
      let state;
      if (s.connected) state = `<span class="conn online"><span class="dot"></span>${esc(t("dashboard.table.online"))}</span>`;
      else if (isOffline(s)) state = `<span class="conn offline"><span class="dot"></span>${esc(t("dashboard.counter.offline"))}</span>`;
      else if (s.status === "ready") state = `<span class="conn idle">${esc(t("dashboard.table.notStarted"))}</span>`;
      else state = `<span class="conn idle">${esc(t("dashboard.table.closed"))}</span>`;
      const extra = [];
      if (s.connected && s.rtt_ms != null) extra.push(mark(row, "rtt_ms", `${Math.round(s.rtt_ms)} ms`, "dashboard.indicator.rtt"));
      if (s.reconnects) extra.push(`<span title="${esc(t("dashboard.table.reconnects"))}">↻ ${s.reconnects}</span>`);
      return extra.length ? `${state}<span class="sub">${extra.join(" · ")}</span>` : state;
    },
  },
  last_seen: {
    fields: ["last_seen", "connected"],
    clock: true,
    sort: (s) => -(s.last_seen ?? 0),
    render: (s, row, now) => {
      // Time offline in all (kept by the server across reconnects), coloured once it reaches
      // an indicator threshold.
      const seconds = offlineSeconds(s, now);
      const offline = seconds >= 1
        ? `<span class="sub offline-total">${mark(row, "offline_seconds", esc(t("dashboard.table.offlineFor", { span: duration(seconds * 1000) })), "dashboard.indicator.offline")}</span>`
        : "";
      if (s.connected) return `<span class="muted">${esc(t("dashboard.table.now"))}</span>${offline}`;
      if (s.last_seen == null) return `<span class="muted">—</span>`;
      return `<time datetime="${new Date(s.last_seen * 1000).toISOString()}">${ago(s.last_seen, now)}</time>${offline}`;
    },
  },
  progress: {
    fields: ["position", "answered"],
    sort: (s) => -(s.position * 1e6 + s.answered),
    render: (s) =>
      s.position || s.answered
        ? `<span class="prog" title="${esc(t("dashboard.table.progressTitle", { position: s.position, count: s.answered }))}">${esc(t("dashboard.table.position", { position: s.position }))}</span> <span class="sub">${esc(t("dashboard.table.answered", { count: s.answered }))}</span>`
        : `<span class="muted">—</span>`,
  },
  time_left: {
    fields: ["deadline", "status", "paused_at"],
    clock: true,
    sort: (s, now) => timeLeft(s, now) ?? Number.MAX_SAFE_INTEGER,
    render: (s, row, now) => {
      const left = timeLeft(s, now);
      if (left == null) return `<span class="muted">—</span>`;
      const cls = left <= 0 ? "time over" : left < 5 * 60000 ? "time low" : "time";
      const paused = s.status === "paused" ? ` <span class="sub">${esc(t("dashboard.table.paused"))}</span>` : "";
      return `<span class="${cls}">${left <= 0 ? "0:00" : duration(left)}</span>${paused}`;
    },
  },
  alerts: {
    fields: ["alerts", "last_alert"],
    sort: (s) => -s.alerts,
    render: (s, row) =>
      s.alerts
        ? `${mark(row, "alerts", `<span class="alerts" title="${esc(t("dashboard.table.lastAlert", { alert: s.last_alert }))}">${s.alerts}</span>`, "dashboard.indicator.alerts")}<span class="sub">${esc(alertLabel(s.last_alert))}</span>`
        : `<span class="muted">0</span>`,
  },
  hand: {
    fields: ["hand_raised", "hand_raised_at", "hand_acked_at"],
    clock: true,
    // Raised hands first, the longest waiting on top.
    sort: (s) => (s.hand_raised ? s.hand_raised_at ?? 0 : Number.MAX_SAFE_INTEGER),
    render: (s, row, now) => {
      if (s.hand_raised) {
        const since = s.hand_raised_at != null ? ` <span class="sub">${ago(s.hand_raised_at, now)}</span>` : "";
        const ack = row.canAckHand
          ? `<button type="button" class="btn small hand-ack" data-ack-hand="${esc(s.id)}">${esc(t("dashboard.hand.acknowledge"))}</button>`
          : "";
        return `<span class="hand up">${HAND_ICON}${esc(t("dashboard.hand.raised"))}</span>${since}${ack}`;
      }
      if (s.hand_acked_at != null) {
        const title = t("dashboard.hand.ackedBy", { who: s.hand_acked_by ?? "" });
        return `<span class="hand seen" title="${esc(title)}">${esc(t("dashboard.hand.seen"))}</span>`;
      }
      return `<span class="muted">—</span>`;
    },
  },
  incidents: {
    fields: ["incidents", "last_incident", "last_incident_text", "last_incident_at"],
    sort: incidentSort,
    render: (s) => incidentCell(s),
  },
  command: {
    fields: [],
    sort: (s, now, row) => (row.delivery ? -row.delivery.at : 0),
    render: (s, row) => {
      const d = row.delivery;
      if (!d) return `<span class="muted">—</span>`;
      const why = d.state === "queued" ? t("dashboard.table.queuedTitle") : d.reason;
      const title = why ? ` title="${esc(why)}"` : "";
      return (
        `<span class="cmd">${esc(actionLabel(d.action))}</span>` +
        `<span class="delivery d-${d.state}"${title} data-command-id="${esc(d.commandId)}">${esc(deliveryText(d.state))}</span>`
      );
    },
  },
};
const COLUMN_KEYS = Object.keys(COLUMNS);
const CLOCK_COLUMNS = COLUMN_KEYS.filter((k) => COLUMNS[k].clock);
const FILTER_FIELDS = new Set(["status", "group", "candidate_name", "candidate_id", "connected", "alerts", "hand_raised", "incidents"]);

class Row {
  constructor(session) {
    this.session = session;
    this.selected = false;
    this.delivery = null;
    this.stale = true; // not rendered yet
    this.html = new Array(COLUMN_KEYS.length).fill(null);
    this.tr = document.createElement("tr");
    this.tr.dataset.sessionId = session.id;
    this.cells = COLUMN_KEYS.map((key) => {
      const td = document.createElement("td");
      td.className = `col-${key}`;
      this.tr.append(td);
      return td;
    });
    this.check = document.createElement("input");
    this.check.type = "checkbox";
    this.check.className = "row-check";
    this.cells[0].append(this.check);
    this.checkLabel = "";
    this.classes = "";
    this.levels = null; // indicator levels, from the exam's thresholds
    this.canAckHand = false;
  }
}

/**
 * The table of one exam's sessions.
 */
export class SessionTable extends EventTarget {
  /**
   * @param {object} els `{table, tbody, wrap, empty, selectAll}`
   * @param {() => number} now server time in ms
   */
  constructor(els, now) {
    super();
    this.els = els;
    this.now = now;
    /** @type {Map<string, Row>} */
    this.rows = new Map();
    /** @type {Row[]} the filtered, sorted rows, as shown */
    this.visible = [];
    this.filter = { statuses: new Set(), groups: new Set(), search: "", offline: false, alerts: false, hands: false, incidents: false };
    this.indicators = null; // exam.settings.indicators
    this.canAckHand = false;
    this.sortKey = "candidate";
    this.sortDir = 1;
    this.dirty = new Set();
    this.orderDirty = true;
    this.countsDirty = true;
    this.frame = 0;
    this.lastAnchor = null;
    /** @type {Row[]} the attached rows (the window) */
    this.attached = [];
    this.windowDirty = true;
    this.rowHeight = 0; // measured from the first attached row
    this.overscan = 12;
    this.printing = false;
    /** The current row for keyboard moves (j / k), a session id. */
    this.cursorId = null;
    this.topSpacer = spacer();
    this.bottomSpacer = spacer();
    els.tbody.replaceChildren(this.topSpacer, this.bottomSpacer);
    this._onScroll = () => {
      this.windowDirty = true;
      this._schedule();
    };
    els.wrap.addEventListener("scroll", this._onScroll, { passive: true });
    this.resizeObserver = new ResizeObserver(this._onScroll);
    this.resizeObserver.observe(els.wrap);
    this.ticker = setInterval(() => this.tick(), 1000);
    const printMedia = matchMedia("print");
    this.listeners = [
      [els.tbody, "click", (e) => this._onClick(e)],
      [els.tbody, "focusin", (e) => {
        const id = e.target.closest("tr[data-session-id]")?.dataset.sessionId;
        if (id) this.setCursor(id);
      }],
      [window, "beforeprint", () => this.setPrinting(true)],
      [window, "afterprint", () => this.setPrinting(printMedia.matches)],
      [printMedia, "change", (e) => this.setPrinting(e.matches)],
      [els.selectAll, "change", () => this.selectAllVisible(els.selectAll.checked)],
      ...[...els.table.querySelectorAll("th[data-sort]")].map((th) => [
        th.querySelector("button"),
        "click",
        () => this.sortBy(th.dataset.sort),
      ]),
    ];
    for (const [el, type, fn] of this.listeners) el.addEventListener(type, fn);
    this._renderSortHeaders();
  }

  destroy() {
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    this.frame = -1; // never schedule again
    this.resizeObserver.disconnect();
    this.els.wrap.removeEventListener("scroll", this._onScroll);
    for (const [el, type, fn] of this.listeners) el.removeEventListener(type, fn);
    this.els.selectAll.checked = false;
    this.els.selectAll.indeterminate = false;
    this.els.tbody.replaceChildren();
    this.els.table.removeAttribute("aria-rowcount");
    this.rows.clear();
  }

  // -- data ---------------------------------------------------------------------------------

  /** Replace all sessions (a snapshot); rows of unchanged sessions keep their DOM. */
  reset(sessions) {
    const seen = new Set();
    for (const s of sessions) {
      seen.add(s.id);
      const row = this.rows.get(s.id);
      if (row) {
        row.session = s;
        this._markDirty(row);
      } else {
        this._add(s);
      }
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        this.rows.delete(id);
        row.tr.remove();
      }
    }
    this.orderDirty = true;
    this.countsDirty = true;
    this._schedule();
  }

  /** One session changed (`fields` are the keys that differ). */
  update(session, fields) {
    let row = this.rows.get(session.id);
    if (!row) {
      row = this._add(session);
      this.orderDirty = true;
    } else {
      row.session = session;
      this._markDirty(row);
      if (fields.some((f) => FILTER_FIELDS.has(f) || this._sortFields().has(f))) this.orderDirty = true;
    }
    this.countsDirty = true;
    this._schedule();
  }

  /** The exam's indicator thresholds (`settings.indicators`): rows are coloured by them. */
  setIndicators(thresholds) {
    this.indicators = thresholds ?? null;
    for (const row of this.rows.values()) this._markDirty(row);
    this._schedule();
  }

  /** Whether this user may acknowledge raised hands (a button in the row). */
  setCanAckHand(can) {
    this.canAckHand = !!can;
    for (const row of this.rows.values()) this._markDirty(row);
    this._schedule();
  }

  /** Set a session's last-command delivery state. */
  setDelivery(sessionId, delivery) {
    const row = this.rows.get(sessionId);
    if (!row) return;
    row.delivery = { ...row.delivery, ...delivery };
    this._markDirty(row);
    if (this.sortKey === "command") this.orderDirty = true;
    this._schedule();
  }

  delivery(sessionId) {
    return this.rows.get(sessionId)?.delivery ?? null;
  }

  get(sessionId) {
    return this.rows.get(sessionId)?.session;
  }

  _add(session) {
    const row = new Row(session);
    this.rows.set(session.id, row);
    this._markDirty(row);
    return row;
  }

  _markDirty(row) {
    this.dirty.add(row);
  }

  // -- filter, sort, selection --------------------------------------------------------------

  setFilter(patch) {
    Object.assign(this.filter, patch);
    this.orderDirty = true;
    this._schedule();
  }

  toggleStatus(status) {
    const statuses = this.filter.statuses;
    if (statuses.has(status)) statuses.delete(status);
    else statuses.add(status);
    this.setFilter({});
  }

  /** Whether any filter is active. */
  get filtered() {
    const f = this.filter;
    return f.statuses.size > 0 || f.groups.size > 0 || !!f.search.trim() || f.offline || f.alerts || f.hands || f.incidents;
  }

  matches(s) {
    const f = this.filter;
    if (f.statuses.size && !f.statuses.has(s.status)) return false;
    if (f.groups.size && !f.groups.has(s.group)) return false;
    if (f.offline && !isOffline(s)) return false;
    if (f.alerts && !s.alerts) return false;
    if (f.hands && !s.hand_raised) return false;
    if (f.incidents && !s.incidents) return false;
    const needle = f.search.trim().toLocaleLowerCase();
    if (needle) {
      // The same haystack as the server's filter (sessions.Target.matches).
      const hay = `${s.candidate_name} ${s.candidate_id} ${s.id}`.toLocaleLowerCase();
      if (!hay.includes(needle)) return false;
    }
    return true;
  }

  /** The command target for "all matching the filter", as the server understands it. */
  filterTarget() {
    const f = this.filter;
    if (!this.filtered) return "all";
    const target = {};
    if (f.statuses.size) target.status = [...f.statuses];
    if (f.groups.size === 1) target.group = [...f.groups][0];
    if (f.search.trim()) target.search = f.search.trim();
    // Client-only filters (and several groups, which the server's filter has not): narrow the
    // server's filter to the sessions shown.
    if (f.offline || f.alerts || f.hands || f.incidents || f.groups.size > 1) target.session_ids = this.visible.map((r) => r.session.id);
    if (!target.status && !target.group && !target.search) target.all = true;
    return target;
  }

  /** Sort by a column; again by the same one reverses it, unless `dir` (1, -1) is given. */
  sortBy(key, dir) {
    if (dir) this.sortDir = dir;
    else if (this.sortKey === key) this.sortDir = -this.sortDir;
    else this.sortDir = 1;
    this.sortKey = key;
    this._renderSortHeaders();
    this.orderDirty = true;
    this._schedule();
    this.dispatchEvent(new CustomEvent("sort", { detail: { key: this.sortKey, dir: this.sortDir } }));
  }

  /** Re-render every row (e.g. incidents acknowledged: their badges are no longer new). */
  refreshAll() {
    for (const row of this.rows.values()) this._markDirty(row);
    this._schedule();
  }

  _sortFields() {
    return new Set(COLUMNS[this.sortKey]?.fields ?? []);
  }

  _renderSortHeaders() {
    for (const th of this.els.table.querySelectorAll("th[data-sort]")) {
      if (th.dataset.sort === this.sortKey) th.setAttribute("aria-sort", this.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  /** The selected sessions (only ever ones that are shown). */
  get selected() {
    return this.visible.filter((r) => r.selected).map((r) => r.session);
  }

  select(ids, on = true) {
    for (const id of ids) {
      const row = this.rows.get(id);
      if (row && row.selected !== on) {
        row.selected = on;
        this._markDirty(row);
      }
    }
    this._schedule();
    this._selectionChanged();
  }

  selectAllVisible(on) {
    const shown = new Set(this.visible);
    for (const row of this.rows.values()) {
      const want = on && shown.has(row);
      if (row.selected !== want) {
        row.selected = want;
        this._markDirty(row);
      }
    }
    this._schedule();
    this._selectionChanged();
  }

  clearSelection() {
    this.selectAllVisible(false);
  }

  _selectionChanged() {
    const n = this.visible.reduce((a, r) => a + (r.selected ? 1 : 0), 0);
    const all = this.els.selectAll;
    all.checked = n > 0 && n === this.visible.length;
    all.indeterminate = n > 0 && n < this.visible.length;
    this.dispatchEvent(new CustomEvent("selection", { detail: { count: n } }));
  }

  _onClick(event) {
    const ack = event.target.closest("button[data-ack-hand]");
    if (ack) {
      this.dispatchEvent(new CustomEvent("ack-hand", { detail: { id: ack.dataset.ackHand } }));
      return;
    }
    const open = event.target.closest("button.cand");
    if (open) {
      this.dispatchEvent(new CustomEvent("open", { detail: { id: open.dataset.open } }));
      return;
    }
    const box = event.target.closest("input.row-check");
    if (!box) return;
    const tr = box.closest("tr");
    const row = this.rows.get(tr.dataset.sessionId);
    if (!row) return;
    if (event.shiftKey && this.lastAnchor && this.visible.includes(this.lastAnchor)) {
      const a = this.visible.indexOf(this.lastAnchor);
      const b = this.visible.indexOf(row);
      const [from, to] = a < b ? [a, b] : [b, a];
      for (let i = from; i <= to; i++) {
        const r = this.visible[i];
        if (r.selected !== box.checked) {
          r.selected = box.checked;
          this._markDirty(r);
        }
      }
    } else {
      row.selected = box.checked;
      this._markDirty(row);
    }
    this.lastAnchor = row;
    this._schedule();
    this._selectionChanged();
  }

  // -- keyboard cursor ----------------------------------------------------------------------

  setCursor(sessionId) {
    if (sessionId === this.cursorId) return;
    const before = this.rows.get(this.cursorId);
    this.cursorId = sessionId;
    if (before) this._markDirty(before);
    const row = this.rows.get(sessionId);
    if (row) this._markDirty(row);
    this._schedule();
  }

  /** Move the current row by `delta` among the shown rows and focus it (scrolled into view). */
  moveCursor(delta) {
    const total = this.visible.length;
    if (!total) return;
    const at = this.visible.findIndex((r) => r.session.id === this.cursorId);
    const index = at < 0 ? (delta > 0 ? 0 : total - 1) : Math.min(total - 1, Math.max(0, at + delta));
    const row = this.visible[index];
    this.setCursor(row.session.id);
    if (!row.tr.isConnected) this.reveal(row.session.id);
    this.flush(); // attach it now, to focus it
    row.tr.querySelector("button.cand")?.focus();
  }

  /** Select or unselect the current row (x). */
  toggleCursorSelection() {
    const row = this.rows.get(this.cursorId);
    if (!row || !this.visible.includes(row)) return;
    this.select([row.session.id], !row.selected);
    this.lastAnchor = row;
  }

  // -- printing -----------------------------------------------------------------------------

  /** Attach every shown row while printing (paper has no scrolling), the window after. */
  setPrinting(on) {
    if (on === this.printing || this.frame < 0) return;
    this.printing = on;
    this.windowDirty = true;
    this.flush(); // before the page is laid out for paper: beforeprint gives no frame
  }

  // -- counts -------------------------------------------------------------------------------

  counts() {
    const c = { total: 0, offline: 0, locked: 0, alerts: 0, hands: 0, incidents: 0 };
    for (const s of STATUSES) c[s] = 0;
    for (const { session: s } of this.rows.values()) {
      c.total += 1;
      c[s.status] = (c[s.status] ?? 0) + 1;
      if (isOffline(s)) c.offline += 1;
      if (s.locked) c.locked += 1;
      if (s.alerts) c.alerts += 1;
      if (s.hand_raised) c.hands += 1;
      if (s.incidents) c.incidents += 1;
    }
    return c;
  }

  /** The sorted group names seen in the sessions. */
  groups() {
    const groups = new Set();
    for (const { session } of this.rows.values()) if (session.group) groups.add(session.group);
    return [...groups].sort(naturalCompare);
  }

  // -- rendering ----------------------------------------------------------------------------

  _schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Apply everything pending to the DOM (once per animation frame). */
  flush() {
    this.frame = 0;
    const now = this.now();
    if (this.orderDirty) this._reorder(now);
    for (const row of this.dirty) {
      if (row.tr.isConnected) this._renderRow(row, now);
      else row.stale = true; // rendered when it scrolls into view
    }
    this.dirty.clear();
    if (this.windowDirty) this._renderWindow(now);
    if (this.windowDirty) this._renderWindow(now); // once more after measuring the row height
    if (this.countsDirty) {
      this.countsDirty = false;
      this.dispatchEvent(new CustomEvent("counts"));
    }
  }

  _reorder(now) {
    this.orderDirty = false;
    const column = COLUMNS[this.sortKey] ?? COLUMNS.candidate;
    const dir = this.sortDir;
    const tiebreak = COLUMNS.candidate.sort;
    const visible = [];
    for (const row of this.rows.values()) {
      if (this.matches(row.session)) {
        row.sortValue = column.sort(row.session, now, row);
        row.tieValue = tiebreak(row.session);
        visible.push(row);
      } else if (row.selected) {
        row.selected = false; // what you see is what you act on
        this.dirty.add(row);
      }
    }
    visible.sort((a, b) => {
      const x = a.sortValue;
      const y = b.sortValue;
      if (typeof x === "string") {
        const order = naturalCompare(x, y);
        if (order) return order * dir;
      } else if (x < y) return -dir;
      else if (x > y) return dir;
      return naturalCompare(a.tieValue, b.tieValue);
    });
    const changed = visible.length !== this.visible.length;
    this.visible = visible;
    this.windowDirty = true;
    this.els.table.setAttribute("aria-rowcount", String(visible.length + 1));
    this.els.empty.hidden = visible.length > 0 || this.rows.size === 0;
    this._selectionChanged();
    if (changed) this.dispatchEvent(new CustomEvent("visible", { detail: { count: visible.length } }));
  }

  /** Attach the rows in view (plus the overscan), in order, between the spacers. */
  _renderWindow(now) {
    this.windowDirty = false;
    const wrap = this.els.wrap;
    const height = this.rowHeight || 48;
    const headHeight = this.els.table.tHead?.offsetHeight ?? 0;
    const top = Math.max(0, wrap.scrollTop - headHeight);
    const total = this.visible.length;
    let start = this.printing ? 0 : Math.max(0, Math.floor(top / height) - this.overscan);
    let end = this.printing ? total : Math.min(total, Math.ceil((top + wrap.clientHeight) / height) + this.overscan);
    if (end < start) end = start;
    if (start > total) start = total;
    const slice = this.visible.slice(start, end);
    const body = this.els.tbody;
    let node = this.topSpacer.nextElementSibling;
    for (let i = 0; i < slice.length; i++) {
      const row = slice[i];
      const index = String(start + i + 2); // the header is row 1
      if (row.tr.getAttribute("aria-rowindex") !== index) row.tr.setAttribute("aria-rowindex", index);
      if (row.stale) {
        row.stale = false;
        this._renderRow(row, now);
      }
      if (row.tr === node) node = node.nextElementSibling;
      else body.insertBefore(row.tr, node);
    }
    while (node && node !== this.bottomSpacer) {
      const next = node.nextElementSibling;
      node.remove();
      node = next;
    }
    this.attached = slice;
    this.topSpacer.firstChild.style.height = `${start * height}px`;
    this.bottomSpacer.firstChild.style.height = `${(total - end) * height}px`;
    if (!this.rowHeight && slice.length && !this.printing) {
      this.rowHeight = slice[0].tr.getBoundingClientRect().height || 48;
      if (Math.abs(this.rowHeight - height) > 0.5) this.windowDirty = true;
    }
  }

  _renderRow(row, now) {
    const s = row.session;
    if (row.check.checked !== row.selected) row.check.checked = row.selected;
    const label = t("dashboard.table.select", { name: s.candidate_name });
    if (label !== row.checkLabel) {
      row.checkLabel = label;
      row.check.setAttribute("aria-label", label);
    }
    row.levels = indicatorLevels(s, this.indicators, now);
    row.canAckHand = this.canAckHand;
    for (let i = 1; i < COLUMN_KEYS.length; i++) {
      const html = COLUMNS[COLUMN_KEYS[i]].render(s, row, now);
      if (html !== row.html[i]) {
        row.html[i] = html;
        row.cells[i].innerHTML = html;
      }
    }
    this._renderClasses(row);
    const tr = row.tr;
    if (tr.dataset.status !== s.status) tr.dataset.status = s.status;
    const hand = String(!!s.hand_raised);
    if (tr.dataset.hand !== hand) tr.dataset.hand = hand;
    const connected = String(!!s.connected);
    if (tr.dataset.connected !== connected) tr.dataset.connected = connected;
    const locked = String(!!s.locked);
    if (tr.dataset.locked !== locked) tr.dataset.locked = locked;
    const aria = String(row.selected);
    if (tr.getAttribute("aria-selected") !== aria) tr.setAttribute("aria-selected", aria);
  }

  /** The row's classes: offline, selected, paused, and its worst indicator level. */
  _renderClasses(row) {
    const s = row.session;
    const worst = row.levels?.worst ?? "ok";
    const cursor = s.id === this.cursorId ? "cursor " : "";
    const classes = `${isOffline(s) ? "offline " : ""}${row.selected ? "selected " : ""}${s.status === "paused" ? "paused " : ""}${cursor}${worst !== "ok" ? `ind-${worst} ` : ""}${s.hand_raised ? "hand-raised " : ""}`;
    if (classes !== row.classes) {
      row.classes = classes;
      row.tr.className = classes;
    }
    if (row.tr.dataset.indicator !== worst) row.tr.dataset.indicator = worst;
  }

  /** Render every row again (the language changed): attached ones now, the rest when shown. */
  redraw() {
    for (const row of this.rows.values()) this.dirty.add(row);
    this._schedule();
  }

  /** Once a second: the clock-driven cells of the attached rows (and time offline). */
  tick() {
    const now = this.now();
    for (const row of this.attached) {
      if (!row.tr.isConnected) continue;
      row.levels = indicatorLevels(row.session, this.indicators, now);
      this._renderClasses(row);
      for (const key of CLOCK_COLUMNS) {
        const i = COLUMN_KEYS.indexOf(key);
        const html = COLUMNS[key].render(row.session, row, now);
        if (html !== row.html[i]) {
          row.html[i] = html;
          row.cells[i].innerHTML = html;
        }
      }
    }
  }

  /** Scroll a session's row into view (e.g. after a search). */
  reveal(sessionId) {
    const index = this.visible.findIndex((r) => r.session.id === sessionId);
    if (index < 0) return;
    this.els.wrap.scrollTop = index * (this.rowHeight || 48);
    this.windowDirty = true;
    this._schedule();
  }
}

function spacer() {
  const tr = document.createElement("tr");
  tr.className = "spacer";
  tr.setAttribute("aria-hidden", "true");
  const td = document.createElement("td");
  td.colSpan = COLUMN_KEYS.length;
  tr.append(td);
  return tr;
}
