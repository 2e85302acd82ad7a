// The side panel: one session's details, its commands, history and the irregularity form.

import { api, download, openPrintView, query } from "./api.js";
import { session as signedIn } from "./auth.js";
import { localize, plain, t } from "/client/i18n.js";
import { categoryLabel, fillCategorySelect } from "./categories.js";
import { actionLabel, ago, alertLabel, clockTime, duration, esc, eventLabel, localToIso, statusLabel } from "./format.js";
import { incidentDetails } from "./incidents.js";
import { isOffline, timeLeft } from "./table.js";
import { toast } from "./ui.js";

/** Pages of 1,000 history entries the panel shows at most; beyond that, the CSV has them all. */
const MAX_HISTORY_PAGES = 5;
/** Entries hidden unless "Progress and deliveries" is ticked. */
const CHATTY_KINDS = new Set(["progress", "delivered"]);

export class SessionPanel {
  /**
   * @param {object} o
   * @param {string} o.examId
   * @param {(id: string) => object|undefined} o.getSession
   * @param {(id: string) => object|null} o.getDelivery
   * @param {(action: string, session: object) => void} o.onAction
   * @param {() => number} o.now server time, ms
   */
  constructor({ examId, getSession, getDelivery, onAction, now }) {
    this.examId = examId;
    this.getSession = getSession;
    this.getDelivery = getDelivery;
    this.onAction = onAction;
    this.now = now;
    this.sessionId = null;
    this.seenEvents = new Set();
    this.el = document.getElementById("panel");
    this.returnFocus = null;
    this.ticker = null;
    const q = (id) => document.getElementById(id);
    this.q = q;
    this._onClose = () => this.close();
    this._onKey = (e) => {
      if (e.key === "Escape" && !document.querySelector("dialog[open]")) this.close();
    };
    this._onActionClick = (e) => {
      const button = e.target.closest("button[data-action]");
      const session = this.sessionId && this.getSession(this.sessionId);
      if (button && session) this.onAction(button.dataset.action, session);
    };
    this._onSubmit = (e) => this._report(e);
    this._onHistoryFilter = (e) => {
      e.preventDefault();
      if (this.sessionId) this.loadHistory(this.sessionId);
    };
    this._onHistoryExport = (e) => this._exportHistory(e.currentTarget.id === "history-print");
    this.historyLoad = 0;
    this.historyShown = { since: null, until: null, all: false };
    q("history-filter").addEventListener("submit", this._onHistoryFilter);
    q("history-all").addEventListener("change", this._onHistoryFilter);
    q("history-csv").addEventListener("click", this._onHistoryExport);
    q("history-print").addEventListener("click", this._onHistoryExport);
    q("panel-close").addEventListener("click", this._onClose);
    this.el.addEventListener("keydown", this._onKey);
    q("panel-actions").addEventListener("click", this._onActionClick);
    q("irregularity-form").addEventListener("submit", this._onSubmit);
  }

  destroy() {
    this.close();
    this.q("panel-close").removeEventListener("click", this._onClose);
    this.el.removeEventListener("keydown", this._onKey);
    this.q("panel-actions").removeEventListener("click", this._onActionClick);
    this.q("irregularity-form").removeEventListener("submit", this._onSubmit);
    this.q("history-filter").removeEventListener("submit", this._onHistoryFilter);
    this.q("history-all").removeEventListener("change", this._onHistoryFilter);
    this.q("history-csv").removeEventListener("click", this._onHistoryExport);
    this.q("history-print").removeEventListener("click", this._onHistoryExport);
  }

  get isOpen() {
    return !this.el.hidden;
  }

  async open(sessionId) {
    const session = this.getSession(sessionId);
    if (!session) return;
    if (!this.isOpen) this.returnFocus = document.activeElement;
    this.sessionId = sessionId;
    this.seenEvents = new Set();
    this.el.hidden = false;
    this.el.dataset.sessionId = sessionId;
    plain(this.q("irr-status"), "");
    this.q("irr-note").value = "";
    this.render();
    this.el.scrollTop = 0;
    this.el.focus();
    clearInterval(this.ticker);
    this.ticker = setInterval(() => this.render(), 1000);
    this.q("history").replaceChildren();
    this.q("history-filter").hidden = !signedIn.can("sessions.history");
    if (!signedIn.can("sessions.history")) return;
    await this.loadHistory(sessionId);
  }

  /** The history filter as query parameters (from/to in UTC, hidden kinds). */
  historyFilters() {
    const filters = {};
    const since = localToIso(this.q("history-from").value);
    const until = localToIso(this.q("history-to").value);
    if (since) filters.from = since;
    if (until) filters.to = until;
    if (!this.q("history-all").checked) filters.exclude = [...CHATTY_KINDS].join(",");
    return filters;
  }

  /** (Re)load the history with the current filter, following `next` pages (at most a few). */
  async loadHistory(sessionId) {
    const load = ++this.historyLoad;
    const filters = this.historyFilters();
    const status = this.q("history-status");
    const list = this.q("history");
    list.replaceChildren();
    this.seenEvents = new Set();
    this.historyShown = {
      since: filters.from ? Date.parse(filters.from) / 1000 : null,
      until: filters.to ? Date.parse(filters.to) / 1000 : null,
      all: !filters.exclude,
    };
    localize(status, "dashboard.panel.loadingHistory");
    try {
      let next = null;
      let count = 0;
      let pages = 0;
      do {
        const page = await api.history(this.examId, sessionId, filters, next);
        if (this.sessionId !== sessionId || load !== this.historyLoad) return;
        for (const event of page.events) this._append(event);
        count += page.events.length;
        next = page.next;
        pages += 1;
      } while (next && pages < MAX_HISTORY_PAGES);
      const ranged = filters.from || filters.to;
      if (next) localize(status, "dashboard.panel.historyCapped", { count });
      else if (count) plain(status, "");
      else localize(status, ranged ? "dashboard.panel.noHistoryInPeriod" : "dashboard.panel.noHistory");
    } catch (err) {
      if (this.sessionId === sessionId && load === this.historyLoad) plain(status, t("dashboard.panel.historyFailed", { error: err.message }));
    }
  }

  async _exportHistory(print) {
    const sessionId = this.sessionId;
    if (!sessionId) return;
    const path = `/api/v1/exams/${encodeURIComponent(this.examId)}/sessions/${encodeURIComponent(sessionId)}/history.${print ? "html" : "csv"}${query(this.historyFilters())}`;
    try {
      if (print) await openPrintView(path);
      else await download(path, `${this.examId}-${sessionId}-history.csv`);
    } catch (err) {
      toast(t("dashboard.panel.exportFailed", { error: err.message }), "error");
    }
  }

  close() {
    if (!this.isOpen) return;
    clearInterval(this.ticker);
    this.el.hidden = true;
    this.sessionId = null;
    delete this.el.dataset.sessionId;
    const back = this.returnFocus;
    this.returnFocus = null;
    if (back && document.contains(back)) back.focus();
  }

  /** A live delta arrived; append it to the history when it is this session's. */
  onEvent(event) {
    if (!this.isOpen || event.session_id !== this.sessionId) return;
    const shown = this.historyShown;
    const inRange = (shown.since == null || event.at >= shown.since) && (shown.until == null || event.at < shown.until);
    if (event.kind !== "progress" && inRange && (shown.all || !CHATTY_KINDS.has(event.kind))) this._append(event);
    plain(this.q("history-status"), "");
    this.render();
  }

  /** The irregularity form's categories: the deployment's tree (a report must name a leaf). */
  setCategories(categories) {
    if (categories?.length) fillCategorySelect(this.q("irr-category"), categories, t("dashboard.command.chooseCategory"));
  }

  /** The language changed: the details and the history again, in it. */
  redraw() {
    if (!this.isOpen) return;
    this.render();
    if (signedIn.can("sessions.history")) this.loadHistory(this.sessionId);
  }

  /** Refresh the details (status, connection, time left). */
  render() {
    const s = this.sessionId && this.getSession(this.sessionId);
    if (!s) return;
    const now = this.now();
    plain(this.q("panel-title"), s.candidate_name);
    this.q("panel-sub").textContent = t("dashboard.panel.sub", { candidate: s.candidate_id, id: s.id });
    const left = timeLeft(s, now);
    const d = this.getDelivery(s.id);
    const connection = s.connected
      ? `${t("dashboard.table.online")}${s.rtt_ms != null ? ` · ${Math.round(s.rtt_ms)} ms` : ""}`
      : isOffline(s)
        ? t("dashboard.panel.disconnectedAgo", { ago: ago(s.last_seen, now) })
        : s.status === "ready"
          ? t("dashboard.table.notStarted")
          : t("dashboard.table.closed");
    const reconnects = s.reconnects ? ` · ↻ ${s.reconnects}` : "";
    const extraText = s.extra_minutes < 0
      ? t("dashboard.panel.fewerMinutes", { count: -s.extra_minutes })
      : t("dashboard.panel.extraMinutes", { count: s.extra_minutes });
    const extra = s.extra_minutes ? ` <span class="muted">(${esc(extraText)})</span>` : "";
    const progress = t("dashboard.panel.progress", { position: s.position, count: s.answered });
    const rows = [
      ["dashboard.monitor.status", `<span class="badge st-${esc(s.status)}">${esc(statusLabel(s.status))}</span>`],
      ["dashboard.monitor.lock", s.locked
        ? `<span class="lock on">${esc(t("dashboard.table.locked"))}</span>`
        : `<span class="lock off">${esc(t("dashboard.table.unlocked"))}</span>`],
      ["dashboard.monitor.group", esc(s.group || "—")],
      ["dashboard.monitor.connection", `<span class="${isOffline(s) ? "error-text" : ""}">${esc(connection + reconnects)}</span>`],
      ["dashboard.monitor.progress", s.position || s.answered ? esc(progress) : "—"],
      ["dashboard.monitor.timeLeft", (left == null ? "—" : left <= 0 ? "0:00" : duration(left)) + extra],
      ["dashboard.panel.started", esc(clockTime(s.started_at))],
      ...incidentDetails(s, now),
      ["dashboard.monitor.alerts", s.alerts ? `${s.alerts} <span class="muted">(${esc(alertLabel(s.last_alert))})</span>` : "0"],
      ["dashboard.audit.address", `<span class="mono">${esc(s.remote_addr || "—")}</span>`],
      ["dashboard.monitor.lastCommand", d ? `${esc(actionLabel(d.action))} · ${esc(t(`dashboard.delivery.${d.state}`))}` : "—"],
    ];
    // Reopen is for terminated sessions only (the button is there only with sessions.reopen).
    const reopen = this.q("panel-actions").querySelector('[data-action="reopen"]');
    if (reopen) reopen.disabled = s.status !== "terminated";
    const html = rows.map(([k, v]) => `<div><dt>${esc(t(k))}</dt><dd>${v}</dd></div>`).join("");
    const details = this.q("panel-details");
    if (details.innerHTML !== html) details.innerHTML = html;
  }

  _append(event) {
    // Live deltas carry no id; the REST history does: (kind, time) identifies an entry.
    const key = `${event.kind}|${event.at}`;
    if (this.seenEvents.has(key)) return;
    this.seenEvents.add(key);
    const li = document.createElement("li");
    li.className = `h-${event.kind}`;
    const details = [];
    const d = event.details ?? {};
    if (event.before && event.after && event.before !== event.after) details.push(`${statusLabel(event.before)} → ${statusLabel(event.after)}`);
    if (d.reason_category) details.push(categoryLabel(d.reason_category));
    if (d.reason) details.push(t("dashboard.history.reason", { reason: d.reason }));
    if (d.minutes) details.push(t(event.kind === "reduce" ? "dashboard.panel.fewerMinutes" : "dashboard.panel.extraMinutes", { count: d.minutes }));
    if (d.text) details.push(`“${d.text}”`);
    if (d.name) details.push(alertLabel(d.name));
    if (d.category) details.push(categoryLabel(d.category));
    if (d.note) details.push(d.note);
    if (event.kind === "progress") details.push(t("dashboard.panel.progress", { position: event.changes?.position, count: event.changes?.answered }));
    // Where an open came from: the address and the browser (User-Agent) it used.
    const place = [d.remote_addr && t("dashboard.history.from", { address: d.remote_addr }), d.user_agent].filter(Boolean).join(" · ");
    const me = signedIn.me;
    const actorName = event.actor_name ?? (me && event.actor === `staff:${me.id}` ? me.name : event.actor);
    li.innerHTML =
      `<time>${esc(clockTime(event.at))}</time>` +
      `<span class="h-kind">${esc(eventLabel(event.kind))}</span>` +
      `<span class="h-actor muted" translate="no" title="${esc(event.actor)}">${esc(actorName)}</span>` +
      (details.length ? `<span class="h-details">${esc(details.join(" · "))}</span>` : "") +
      (place ? `<span class="h-place">${esc(place)}</span>` : "");
    this.q("history").prepend(li);
  }

  async _report(event) {
    event.preventDefault();
    const sessionId = this.sessionId;
    if (!sessionId) return;
    const category = this.q("irr-category").value;
    const note = this.q("irr-note").value.trim();
    const status = this.q("irr-status");
    if (!category) {
      localize(status, "dashboard.panel.needCategory");
      this.q("irr-category").focus();
      return;
    }
    const button = event.target.querySelector("button[type=submit]");
    button.disabled = true;
    localize(status, "dashboard.panel.reporting");
    try {
      const created = await api.reportIrregularity(this.examId, sessionId, category, note);
      if (this.sessionId === sessionId) {
        this._append(created);
        this.q("irr-note").value = "";
        localize(status, "dashboard.panel.reported");
      }
      toast(t("dashboard.panel.reportedToast"), "ok");
    } catch (err) {
      plain(status, t("dashboard.panel.notReported", { error: err.message }));
    } finally {
      button.disabled = false;
    }
  }
}
