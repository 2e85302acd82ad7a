// Monitoring one exam: the live connection, the table, the toolbar, commands and the panel.

import { listenKeys } from "/client/keys.js";
import { DashboardConnection, State, randomId } from "/client/realtime.js";
import { AlertBanner } from "./alerts.js";
import { api, download, openPrintView, query, serverClock } from "./api.js";
import { session as signedIn } from "./auth.js";
import { errorText, localize, onLanguageChange, plain, t, zoneName } from "/client/i18n.js";
import { loadReasons } from "./categories.js";
import { actionDone, actionLabel, clockTime, esc, localToIso } from "./format.js";
import { acknowledgeIncidents, incidentLabel, incidentLevel, noteIncident, resetIncidents, resyncIncidents } from "./incidents.js";
import { notifyStaff, onNotifyChange } from "./notify.js";
import { SessionPanel } from "./panel.js";
import { STATUSES, SessionTable, isOffline, naturalCompare } from "./table.js";
import { askCommand, toast } from "./ui.js";

const ACTIONS = new Set(["authorize", "pause", "resume", "lock", "unlock", "terminate", "extend", "notice", "acknowledge_hand", "reduce", "reopen"]);
/** Commands whose reason may carry a category (the server's `CATEGORISED_ACTIONS`). */
const CATEGORISED = new Set(["pause", "resume", "lock", "unlock", "terminate", "extend", "reduce", "reopen"]);
const DELIVERY_RANK = { pending: 0, failed: 1, skipped: 1, sent: 2, queued: 2, delivered: 3 };

/** Why a session was skipped, in words (dashboard.skip.<reason>; the code when unknown). */
function skipText(reason) {
  const key = `dashboard.skip.${reason}`;
  const text = t(key);
  return text === key ? reason : text;
}

const $ = (id) => document.getElementById(id);

/**
 * Start monitoring `examId`. Returns `stop()`.
 * @param {object} o
 * @param {string} o.examId
 * @param {string} o.token
 * @param {(message: string) => void} o.onUnauthorized
 */
export function startMonitor({ examId, token, onUnauthorized }) {
  const now = () => serverClock.now();
  let reasonPolicy = { categories: [], required: [] }; // until the deployment's arrive
  const conn = new DashboardConnection({ examId, token });
  const table = new SessionTable(
    {
      table: $("sessions"),
      tbody: $("session-rows"),
      wrap: $("table-wrap"),
      empty: $("empty-state"),
      selectAll: $("select-all"),
    },
    now,
  );
  const panel = new SessionPanel({
    examId,
    getSession: (id) => conn.sessions.get(id),
    getDelivery: (id) => table.delivery(id),
    onAction: (action, session) => runCommand(action, { single: session }),
    now,
  });
  const banner = new AlertBanner($("alert-banner"), (ids) => {
    // "Show them": filter the table down to the sessions the alert names.
    $("search").value = "";
    table.setFilter({ search: "" });
    table.clearSelection();
    table.select(ids.filter((id) => table.get(id)));
    table.reveal(ids.find((id) => table.get(id)));
  });
  const earlyDeliveries = new Map(); // command id -> Set(session id) delivered before the result
  const cleanups = [];
  let knownGroups = "";
  let pillTimer = null;

  applyPermissions();
  // The reason categories (irregularity form, command dialog); the form waits for them.
  loadReasons()
    .then((policy) => {
      reasonPolicy = policy;
      panel.setCategories(policy.categories);
    })
    .catch((err) => toast(t("dashboard.monitor.categoriesFailed", { error: err.message }), "error"));

  // A snapshot from REST gives the server clock offset before the first countdown.
  api.exam(examId).catch(() => {});

  // -- the connection ---------------------------------------------------------------------

  let snapshots = 0;
  conn.addEventListener("sync", (e) => {
    const { mode, missed } = e.detail;
    if (mode === "snapshot") {
      // The first snapshot is what was there before the user looked: none of it is new.
      if (snapshots++ > 0) resyncIncidents(conn.sessions.values(), (id) => table.get(id), conn.lastSeq);
      renderExam(conn.exam);
      table.setIndicators(conn.exam?.settings?.indicators);
      table.reset([...conn.sessions.values()]);
      showUnacknowledged();
    }
    const info = $("sync-info");
    info.dataset.sync = mode;
    info.dataset.seq = String(conn.lastSeq);
    if (mode === "events") localize(info, "dashboard.monitor.caughtUp", { time: clockTime(now() / 1000), count: missed });
    else localize(info, "dashboard.monitor.synchronised", { time: clockTime(now() / 1000) });
    $("view-monitor").dataset.stale = "false";
  });

  conn.addEventListener("change", (e) => {
    const { session, fields, event } = e.detail;
    // Live, or replayed after a reconnect: after the snapshot, so new until acknowledged.
    if (fields.includes("incidents") && session.incidents) noteIncident(session.id, event.seq);
    table.update(session, fields);
    if (!conn.synced) return; // replaying missed events: the sync message says enough
    if (fields.includes("connected") && isOffline(session)) noteForScreenReader("offline", session);
    if (fields.includes("alerts") && session.alerts) noteForScreenReader("alerts", session);
    if (fields.includes("incidents") && session.incidents) {
      notifyStaff({
        title: t("dashboard.incident.notify", { name: session.candidate_name, what: incidentLabel(session.last_incident) }),
        text: session.last_incident_text,
        level: incidentLevel(session.last_incident),
      });
    }
    if (fields.includes("hand_raised") && session.hand_raised) {
      noteForScreenReader("hands", session);
      notifyStaff({ title: t("dashboard.event.hand_raised"), text: t("dashboard.hand.notify", { name: session.candidate_name }), level: "warning" });
    }
  });

  // Hall-wide drop alerts: live, or still active when the snapshot was taken.
  conn.addEventListener("alert", (e) => {
    const { alert, event } = e.detail;
    if (banner.add(alert, event != null && conn.synced)) {
      $("announcer").textContent = t("dashboard.dropAlert.announce", { count: alert.count });
    }
  });

  // Incidents the page gets after its first snapshot are new (filled badges) until the user
  // acknowledges them: every one the page has applied so far, whatever the clocks say.
  resetIncidents();
  cleanups.push(
    onNotifyChange(({ unseen }) => {
      if (unseen) return;
      acknowledgeIncidents(conn.lastSeq);
      table.refreshAll();
    }),
  );

  // Screen readers hear what needs attention, grouped every few seconds (not every delta).
  const notes = { offline: [], alerts: [], hands: [] };
  let notesTimer = null;
  function noteForScreenReader(kind, session) {
    notes[kind].push(session.candidate_name);
    notesTimer ??= setTimeout(() => {
      notesTimer = null;
      const parts = [];
      const say = (names, what) => {
        if (!names.length) return;
        const who = names.length <= 3 ? names.join(", ") : t("dashboard.monitor.sessionCount", { count: names.length });
        parts.push(t(what, { who, count: names.length }));
      };
      say(notes.offline.splice(0), "dashboard.announce.disconnected");
      say(notes.alerts.splice(0), "dashboard.announce.alert");
      say(notes.hands.splice(0), "dashboard.announce.hand");
      if (parts.length) $("announcer").textContent = `${parts.join(". ")}.`;
    }, 3000);
  }

  conn.addEventListener("event", (e) => {
    const { event, session } = e.detail;
    if (!session && event.kind !== "created") {
      if (event.changes?.incidents) noteIncident(event.session_id, event.seq); // shown once fetched
      fetchUnknown(event.session_id);
    }
    if (ACTIONS.has(event.kind) && session) {
      const commandId = event.details?.command_id ?? event.id;
      const current = table.delivery(session.id);
      if (current?.commandId === commandId && current.state === "pending") {
        // Our own command is applied; command_result confirms it.
        table.setDelivery(session.id, { state: session.connected || event.kind === "terminate" ? "sent" : "queued" });
        takeEarly(commandId, session.id);
      } else if (!current || current.commandId !== commandId) {
        // A command from someone else (another proctor, REST, a script).
        table.setDelivery(session.id, {
          commandId,
          action: event.kind,
          state: session.connected || event.kind === "terminate" ? "sent" : "queued",
          reason: t("dashboard.monitor.byActor", { actor: event.actor }),
          at: Date.now(),
        });
        takeEarly(commandId, session.id);
      }
    }
    panel.onEvent(event);
  });

  conn.addEventListener("delivered", (e) => {
    const { session_id, command_id } = e.detail;
    const current = table.delivery(session_id);
    if (current && current.commandId === command_id) {
      table.setDelivery(session_id, { state: "delivered" });
    } else {
      let set = earlyDeliveries.get(command_id);
      if (!set) earlyDeliveries.set(command_id, (set = new Set()));
      set.add(session_id);
      if (earlyDeliveries.size > 200) earlyDeliveries.delete(earlyDeliveries.keys().next().value);
    }
  });

  conn.addEventListener("state", (e) => renderPill(e.detail));
  conn.addEventListener("unauthorized", (e) => {
    conn.close();
    onUnauthorized(e.detail.message || t("dashboard.login.expired"));
  });
  conn.addEventListener("error", (e) => {
    const m = e.detail;
    if (m.request === "subscribe") {
      localize($("exam-title"), m.code === "not_found" ? "dashboard.monitor.notFound" : "dashboard.monitor.cannotWatch");
      plain($("exam-meta"), m.message);
      toast(m.message, "error");
      conn.close();
    }
  });

  /** A pause/resume or lock/unlock the page has not acknowledged yet (it was offline, or
   * this dashboard was opened since): shown as the row's last command until `delivered`. */
  function showUnacknowledged() {
    for (const s of conn.sessions.values()) {
      const pending = [
        [s.status_command_id, s.status === "paused" ? "pause" : "resume"],
        [s.lock_command_id, s.locked ? "lock" : "unlock"],
      ].filter(([id]) => id);
      for (const [commandId, action] of pending) {
        if (table.delivery(s.id)) continue;
        table.setDelivery(s.id, { commandId, action, state: s.connected ? "sent" : "queued", reason: "", at: 0 });
        takeEarly(commandId, s.id);
      }
    }
  }

  function takeEarly(commandId, sessionId) {
    const set = earlyDeliveries.get(commandId);
    if (set?.has(sessionId)) {
      set.delete(sessionId);
      table.setDelivery(sessionId, { state: "delivered" });
    }
  }

  const unknownFetches = new Set();
  async function fetchUnknown(sessionId) {
    if (unknownFetches.has(sessionId)) return;
    unknownFetches.add(sessionId);
    try {
      const s = await api.session(examId, sessionId);
      if (!conn.sessions.has(s.id)) {
        conn.sessions.set(s.id, s);
        table.update(s, Object.keys(s));
      }
    } catch {
      // not visible to us: ignore
    } finally {
      unknownFetches.delete(sessionId);
    }
  }

  function renderPill(detail) {
    const pill = $("conn-pill");
    const text = pill.querySelector(".conn-text");
    const retry = $("retry-now");
    clearInterval(pillTimer);
    pill.hidden = false;
    pill.dataset.state = detail.state;
    retry.hidden = true;
    const stale = detail.state !== State.OPEN;
    $("view-monitor").dataset.stale = String(stale);
    switch (detail.state) {
      case State.CONNECTING:
        localize(text, "dashboard.pill.connecting");
        break;
      case State.OPEN:
        localize(text, "dashboard.pill.live");
        break;
      case State.RECONNECTING: {
        retry.hidden = false;
        const update = () => {
          const left = detail.retryAt ? Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000)) : 0;
          if (left > 0) localize(text, "dashboard.pill.retrying", { count: left });
          else localize(text, "dashboard.pill.reconnecting");
        };
        update();
        pillTimer = setInterval(update, 500);
        break;
      }
      case State.CLOSED:
        localize(text, "dashboard.pill.disconnected");
        retry.hidden = false;
        break;
      default:
        localize(text, "dashboard.top.notConnected");
    }
  }
  const onRetry = () => {
    if (conn.state === State.CLOSED || conn.state === State.IDLE) conn.connect();
    else conn.retryNow();
  };
  $("retry-now").addEventListener("click", onRetry);
  cleanups.push(() => $("retry-now").removeEventListener("click", onRetry));

  // -- exam header, counters, filters -----------------------------------------------------

  function renderExam(exam) {
    if (!exam) return;
    plain($("exam-title"), exam.title);
    $("crumb-exam").textContent = exam.title;
    document.title = `${exam.title} · ${t("dashboard.top.proctorDashboard")}`;
    const parts = [exam.id, t("dashboard.exams.minutes", { count: exam.duration_minutes })];
    if (exam.settings?.lock_sessions) parts.push(t("dashboard.monitor.locksOnOpen"));
    if (exam.settings?.requires_authorization) parts.push(t("dashboard.monitor.authorizationRequired"));
    const grace = exam.settings?.resume_grace_seconds;
    if (grace === 0) parts.push(t("dashboard.monitor.strictResume"));
    else if (grace != null) parts.push(t("dashboard.monitor.resumeGrace", { count: grace }));
    plain($("exam-meta"), parts.join(" · "));
  }

  const COUNTER_DEFS = [
    ...STATUSES.map((s) => ({ key: s, label: `dashboard.status.${s}`, status: s })),
    { key: "offline", label: "dashboard.counter.offline", flag: "offline" },
    { key: "locked", label: "dashboard.counter.locked" },
    { key: "alerts", label: "dashboard.monitor.withAlerts", flag: "alerts" },
    { key: "hands", label: "dashboard.monitor.handsRaised", flag: "hands" },
    { key: "incidents", label: "dashboard.monitor.withIncidents", flag: "incidents" },
  ];
  const counters = $("counters");
  counters.innerHTML =
    `<div class="counter total"><span class="n" id="count-total">0</span><span class="l" data-i18n="dashboard.counter.total">${esc(t("dashboard.counter.total"))}</span></div>` +
    COUNTER_DEFS.map((d) => {
      const tag = d.status || d.flag ? "button" : "div";
      const attrs = tag === "button" ? ` type="button" aria-pressed="false"` : "";
      return `<${tag} class="counter c-${d.key}" data-counter="${d.key}"${attrs}><span class="n">0</span><span class="l" data-i18n="${d.label}">${esc(t(d.label))}</span></${tag}>`;
    }).join("");
  const onCounter = (e) => {
    const button = e.target.closest("button[data-counter]");
    if (!button) return;
    const def = COUNTER_DEFS.find((d) => d.key === button.dataset.counter);
    if (def.status) table.toggleStatus(def.status);
    else if (def.flag === "offline") $("only-offline").checked = !$("only-offline").checked;
    else if (def.flag === "alerts") $("only-alerts").checked = !$("only-alerts").checked;
    else if (def.flag === "hands") $("only-hands").checked = !$("only-hands").checked;
    else if (def.flag === "incidents") $("only-incidents").checked = !$("only-incidents").checked;
    applyFilters();
  };
  counters.addEventListener("click", onCounter);
  cleanups.push(() => counters.removeEventListener("click", onCounter));

  function renderCounts() {
    const c = table.counts();
    $("count-total").textContent = c.total;
    for (const d of COUNTER_DEFS) {
      const el = counters.querySelector(`[data-counter="${d.key}"]`);
      const n = el.querySelector(".n");
      if (n.textContent !== String(c[d.key])) n.textContent = c[d.key];
      el.classList.toggle("zero", !c[d.key]);
      if (d.status) el.setAttribute("aria-pressed", String(table.filter.statuses.has(d.status)));
      if (d.flag) el.setAttribute("aria-pressed", String(!!table.filter[d.flag]));
    }
    const groups = [...new Set([...(conn.exam?.groups ?? []), ...table.groups()])].sort(naturalCompare);
    const key = groups.join("\u0000");
    if (key !== knownGroups) {
      knownGroups = key;
      const chosen = table.filter.groups;
      for (const g of [...chosen]) if (!groups.includes(g)) chosen.delete(g);
      $("group-options").innerHTML = groups.length
        ? groups
            .map((g) => `<label class="check"><input type="checkbox" value="${esc(g)}"${chosen.has(g) ? " checked" : ""}> ${esc(g)}</label>`)
            .join("")
        : `<span class="muted" data-i18n="dashboard.monitor.noGroups">${esc(t("dashboard.monitor.noGroups"))}</span>`;
      renderGroupSummary();
    }
    renderResultCount();
  }
  table.addEventListener("counts", renderCounts);
  table.addEventListener("visible", renderResultCount);
  table.addEventListener("selection", renderActionBar);
  const renderSortButton = () => {
    const on = table.sortKey === "incidents" && table.sortDir === 1;
    $("incidents-first").setAttribute("aria-pressed", String(on));
  };
  table.addEventListener("sort", renderSortButton);
  renderSortButton();

  function renderGroupSummary() {
    const chosen = [...table.filter.groups].sort(naturalCompare);
    if (chosen.length === 0) localize($("group-filter-summary"), "dashboard.monitor.groupFilterSummary");
    else if (chosen.length <= 2) plain($("group-filter-summary"), chosen.join(", "));
    else localize($("group-filter-summary"), "dashboard.monitor.groupsChosen", { count: chosen.length });
  }

  function chosenGroups() {
    return new Set([...$("group-options").querySelectorAll("input:checked")].map((i) => i.value));
  }

  /** Download (or open for printing) one of the exam's reports, with this tab's credentials. */
  async function exportReport(button) {
    const kind = button.dataset.export;
    const print = button.hasAttribute("data-print");
    const params = {};
    if (kind !== "sessions") {
      const from = localToIso($("export-from").value);
      const to = localToIso($("export-to").value);
      if (from) params.from = from;
      if (to) params.to = to;
    }
    const path = `/api/v1/exams/${encodeURIComponent(examId)}/${kind}.${print ? "html" : "csv"}${query(params)}`;
    button.disabled = true;
    try {
      if (print) await openPrintView(path);
      else await download(path, `${examId}-${kind}.csv`);
    } catch (err) {
      toast(t(`dashboard.monitor.exportFailed.${kind}`, { error: err.message }), "error");
    } finally {
      button.disabled = false;
    }
  }

  function renderResultCount() {
    const total = table.rows.size;
    const shown = table.visible.length;
    if (table.filtered) localize($("result-count"), "dashboard.monitor.showing", { shown, count: total });
    else localize($("result-count"), "dashboard.monitor.sessionCount", { count: total });
    $("clear-filters").hidden = !table.filtered;
    renderActionBar();
  }

  let searchTimer = null;
  function applyFilters() {
    table.setFilter({
      search: $("search").value,
      groups: chosenGroups(),
      offline: $("only-offline").checked,
      alerts: $("only-alerts").checked,
      hands: $("only-hands").checked,
      incidents: $("only-incidents").checked,
    });
    renderGroupSummary();
    renderCounts();
  }
  const onSearch = () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(applyFilters, 60);
  };
  const listeners = [
    [$("search"), "input", onSearch],
    [$("group-options"), "change", applyFilters],
    [$("downloads"), "click", (e) => {
      const button = e.target.closest("button[data-export]");
      if (button) exportReport(button);
    }],
    [$("only-offline"), "change", applyFilters],
    [$("only-alerts"), "change", applyFilters],
    [$("only-hands"), "change", applyFilters],
    [$("only-incidents"), "change", applyFilters],
    [$("incidents-first"), "click", () => {
      if (table.sortKey === "incidents") table.sortBy("candidate", 1);
      else table.sortBy("incidents", 1);
    }],
    [$("scope"), "change", () => renderActionBar()],
    [$("clear-filters"), "click", () => {
      $("search").value = "";
      for (const box of $("group-options").querySelectorAll("input:checked")) box.checked = false;
      $("only-offline").checked = false;
      $("only-alerts").checked = false;
      $("only-hands").checked = false;
      $("only-incidents").checked = false;
      table.filter.statuses.clear();
      applyFilters();
    }],
    [$("clear-selection"), "click", () => table.clearSelection()],
    [$("actionbar"), "click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (button) runCommand(button.dataset.action, { scope: $("scope").value });
    }],
  ];
  for (const [el, type, fn] of listeners) {
    el.addEventListener(type, fn);
    cleanups.push(() => el.removeEventListener(type, fn));
  }
  table.addEventListener("open", (e) => panel.open(e.detail.id));
  table.addEventListener("ack-hand", (e) => {
    const session = conn.sessions.get(e.detail.id);
    if (session) runCommand("acknowledge_hand", { single: session });
  });

  // -- keyboard shortcuts (listed in the help dialog, index.html) --------------------------

  /** p / r / l: the open panel's session, else the selected ones, else the current row. */
  function commandByKey(action) {
    const button = $("actionbar").querySelector(`button[data-action="${action}"]`);
    if (!button || button.hidden) return; // the user's roles do not allow it
    const open = panel.sessionId && conn.sessions.get(panel.sessionId);
    const current = table.cursorId && conn.sessions.get(table.cursorId);
    if (open) runCommand(action, { single: open });
    else if (table.selected.length) runCommand(action, { scope: "selected" });
    else if (current && table.visible.some((r) => r.session.id === current.id)) runCommand(action, { single: current });
    else toast(t("dashboard.keys.selectFirst"), "warn");
  }
  cleanups.push(
    listenKeys({
      "/": () => $("search").focus(),
      j: () => table.moveCursor(1),
      k: () => table.moveCursor(-1),
      x: () => table.toggleCursorSelection(),
      Enter: (e) => {
        if (e.target.closest("button, a, summary, input, dialog")) return false; // their own Enter
        if (!table.cursorId) return false;
        panel.open(table.cursorId);
      },
      p: () => commandByKey("pause"),
      r: () => commandByKey("resume"),
      l: () => commandByKey("lock"),
      Escape: () => (panel.isOpen ? panel.close() : false),
    }),
  );

  function renderActionBar() {
    const selected = table.selected.length;
    const scope = $("scope");
    localize(scope.options[0], "dashboard.monitor.scopeSelected", { count: selected });
    if (table.filtered) localize(scope.options[1], "dashboard.monitor.scopeFiltered", { count: table.visible.length });
    else localize(scope.options[1], "dashboard.monitor.scopeAll", { count: table.rows.size });
    const count = scope.value === "selected" ? selected : table.visible.length;
    for (const b of $("actionbar").querySelectorAll("button[data-action]")) b.disabled = count === 0;
    $("clear-selection").hidden = selected === 0;
  }

  // -- commands ---------------------------------------------------------------------------

  /**
   * Confirm if needed, send, and track the delivery per session.
   * @param {string} action
   * @param {{single?: object, scope?: "selected"|"filter"}} how
   */
  async function runCommand(action, { single, scope }) {
    let target;
    let sessions;
    let description;
    if (single) {
      sessions = [single];
      target = single.id;
      description = single.candidate_name;
    } else if (scope === "selected") {
      sessions = table.selected;
      target = sessions.map((s) => s.id);
      description = t("dashboard.command.whoSelected", { count: sessions.length });
    } else {
      sessions = table.visible.map((r) => r.session);
      target = table.filterTarget();
      description = table.filtered
        ? t("dashboard.command.whoFiltered", { count: sessions.length })
        : t("dashboard.command.whoAll", { count: sessions.length });
    }
    if (!sessions.length) {
      toast(t("dashboard.command.selectFirst"), "warn");
      return;
    }
    const label = actionLabel(action);
    const names = sessions.map((s) => s.candidate_name);
    const input = action === "extend" || action === "reduce" ? "minutes" : action === "notice" ? "text" : null;
    const danger = action === "terminate" || action === "unlock";
    const categoryRequired = reasonPolicy.required.includes(action);
    const confirmNeeded =
      danger || input || action === "reopen" || categoryRequired || sessions.length > 1 || (!single && scope === "filter");
    let params = {};
    if (confirmNeeded) {
      const count = sessions.length;
      params = await askCommand({
        title: t(`dashboard.command.title.${action}`, { count }),
        body: t(`dashboard.command.body.${action}`, { who: description, count }),
        names,
        count,
        confirmLabel: t(`dashboard.command.confirm.${action}`, { count }),
        danger,
        input,
        reason: action !== "notice",
        reasonRequired: action === "reopen",
        categories: CATEGORISED.has(action) ? reasonPolicy.categories : null,
        categoryRequired,
        minutesLabel: t(action === "reduce" ? "dashboard.command.minutesToTakeAway" : "dashboard.command.minutesToAdd"),
      });
      if (!params) return;
    }
    const commandId = randomId(8);
    const at = Date.now();
    for (const s of sessions) table.setDelivery(s.id, { commandId, action, state: "pending", reason: "", at });
    let result;
    try {
      result = await conn.command(action, target, { ...params, command_id: commandId });
    } catch (err) {
      for (const s of sessions) {
        const d = table.delivery(s.id);
        if (d?.commandId === commandId && d.state === "pending") {
          table.setDelivery(s.id, { state: "failed", reason: err.message });
        }
      }
      toast(t("dashboard.command.failed", { action: label, error: errorText(err.code, err.message) }), "error", 10000);
      return;
    }
    for (const a of result.applied) {
      const d = table.delivery(a.session_id);
      if (d?.commandId === commandId && d.state !== a.delivery && DELIVERY_RANK[d.state] <= DELIVERY_RANK[a.delivery]) {
        table.setDelivery(a.session_id, { state: a.delivery });
      } else if (!d && conn.sessions.has(a.session_id)) {
        table.setDelivery(a.session_id, { commandId, action, state: a.delivery, reason: "", at });
      }
      takeEarly(commandId, a.session_id);
    }
    const explicit = new Set(single || scope === "selected" ? sessions.map((s) => s.id) : []);
    const reasons = new Map();
    for (const k of result.skipped) {
      const text = skipText(k.reason);
      reasons.set(text, (reasons.get(text) ?? 0) + 1);
      if (explicit.has(k.session_id)) {
        table.setDelivery(k.session_id, { commandId, action, state: "skipped", reason: k.message || text, at });
      }
    }
    for (const s of sessions) {
      const d = table.delivery(s.id);
      if (d?.commandId === commandId && d.state === "pending") table.setDelivery(s.id, { state: "skipped", reason: t("dashboard.skip.not_applied") });
    }
    const n = result.applied.length;
    let message = n ? actionDone(action, n) : t("dashboard.command.nothingToDo", { action: label });
    if (result.skipped.length) {
      const why = [...reasons].map(([text, count]) => `${count} ${text}`).join(", ");
      message += t("dashboard.command.skipped", { count: result.skipped.length, why });
    }
    toast(message, n ? "ok" : "warn");
  }

  // -- permissions ------------------------------------------------------------------------

  /** Offer only what this user's roles allow (the server refuses the rest anyway). */
  function applyPermissions() {
    let any = false;
    for (const b of document.querySelectorAll("#actionbar [data-action], #panel-actions [data-action]")) {
      const allowed = signedIn.can(b.dataset.permission ?? `sessions.${b.dataset.action}`);
      b.hidden = !allowed;
      any ||= allowed;
    }
    $("actionbar").hidden = !any;
    $("panel-actions").hidden = !any;
    table.setCanAckHand(signedIn.can("sessions.notice"));
    $("irregularity-form").closest("section").hidden = !signedIn.can("sessions.irregularity");
    $("history").closest("section").hidden = !signedIn.can("sessions.history");
  }

  // -- start ------------------------------------------------------------------------------

  // The export range is typed in this browser's zone: say which.
  localize($("export-hint"), "dashboard.monitor.historyAndIrregularitiesOptionally", { zone: zoneName() });

  // A new language: redraw what is made from data (static and localize()d text follow by themselves).
  cleanups.push(
    onLanguageChange(() => {
      renderExam(conn.exam);
      renderPill({ state: conn.state });
      renderGroupSummary();
      renderCounts();
      table.redraw?.();
      panel.redraw?.();
      panel.setCategories(reasonPolicy.categories);
    }),
  );

  // Debug/test hook: the live connection and the table.
  globalThis.__realtime = { connection: conn, table, panel, banner };
  renderActionBar();
  conn.connect();

  return function stop() {
    conn.close();
    clearInterval(pillTimer);
    clearTimeout(notesTimer);
    table.destroy();
    panel.destroy();
    banner.destroy();
    for (const fn of cleanups) fn();
    $("conn-pill").hidden = true;
    delete globalThis.__realtime;
  };
}
