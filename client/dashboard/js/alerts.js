// Hall-wide drop alerts: one banner per alert on every dashboard watching the exam.
//
// An alert arrives live (a `drop_alert` event) or, for a dashboard that connects while it is
// active, with the snapshot; the same alert may come both ways, so alerts are kept by id. A
// dismissed alert stays dismissed in this browser (localStorage), also after a reload. A new
// live alert also goes to `notifyStaff` (js/notify.js), like incidents and raised hands.

import { t } from "/client/i18n.js";
import { clockTime, esc } from "./format.js";
import { notifyStaff } from "./notify.js"; // tab-title count, aria-live, opt-in sound/desktop

const DISMISSED_KEY = "realtime.dismissedAlerts";
const KEEP_DISMISSED = 100;

function dismissedIds() {
  try {
    return JSON.parse(localStorage.getItem(DISMISSED_KEY) ?? "[]");
  } catch {
    return [];
  }
}

/** The banner area above the table. */
export class AlertBanner {
  /**
   * @param {HTMLElement} el the container (`#alert-banner`)
   * @param {(sessionIds: string[]) => void} onShow select/show the sessions an alert names
   */
  constructor(el, onShow) {
    this.el = el;
    this.onShow = onShow;
    this.alerts = new Map(); // id -> alert, in arrival order
    this.dismissed = new Set(dismissedIds());
    this._onClick = (e) => {
      const button = e.target.closest("button[data-alert]");
      if (!button) return;
      const alert = this.alerts.get(button.dataset.alert);
      if (!alert) return;
      if (button.dataset.do === "dismiss") this.dismiss(alert.id);
      else this.onShow(alert.sessions ?? []);
    };
    el.addEventListener("click", this._onClick);
    this.render();
  }

  destroy() {
    this.el.removeEventListener("click", this._onClick);
    this.el.replaceChildren();
    this.el.hidden = true;
  }

  /**
   * An alert, live (`live` true: staff are notified) or from the snapshot.
   * @returns {boolean} whether it is new here
   */
  add(alert, live) {
    if (!alert?.id || this.alerts.has(alert.id)) return false;
    this.alerts.set(alert.id, alert);
    if (this.dismissed.has(alert.id)) return false;
    this.render();
    if (live) notifyStaff({ title: t("dashboard.dropAlert.notifyTitle"), text: describe(alert), level: "danger" });
    return true;
  }

  dismiss(id) {
    this.dismissed.add(id);
    const ids = [...this.dismissed].slice(-KEEP_DISMISSED);
    try {
      localStorage.setItem(DISMISSED_KEY, JSON.stringify(ids));
    } catch {
      // private mode: dismissed for this page only
    }
    this.render();
  }

  /** The alerts shown now (not dismissed). */
  get shown() {
    return [...this.alerts.values()].filter((a) => !this.dismissed.has(a.id));
  }

  render() {
    const shown = this.shown;
    this.el.hidden = shown.length === 0;
    this.el.innerHTML = shown
      .map(
        (a) =>
          `<div class="alert-item" data-alert-id="${esc(a.id)}">` +
          `<svg aria-hidden="true" viewBox="0 0 24 24" width="22" height="22"><path d="M12 3 2 20h20L12 3z" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linejoin="round"/><path d="M12 10v4.5M12 17.2v.3" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"/></svg>` +
          `<div class="alert-text"><strong>${esc(t("dashboard.dropAlert.title"))}</strong> ${esc(describe(a))}</div>` +
          `<button type="button" class="btn small" data-alert="${esc(a.id)}" data-do="show">${esc(t("dashboard.dropAlert.show"))}</button>` +
          `<button type="button" class="btn small ghost" data-alert="${esc(a.id)}" data-do="dismiss" aria-label="${esc(t("dashboard.dropAlert.dismissLabel"))}">${esc(t("dashboard.common.dismiss"))}</button>` +
          `</div>`,
      )
      .join("");
  }
}

/** "12 candidates (hall-A) lost their connection within 60 s, at 09:41:07." */
export function describe(alert) {
  const groups = Object.entries(alert.groups ?? {}).filter(([g]) => g);
  const where = alert.group
    ? t("dashboard.dropAlert.ofGroup", { group: alert.group })
    : groups.length
      ? ` (${groups.map(([g, n]) => `${g}: ${n}`).join(", ")})`
      : "";
  const at = alert.raised_at ? t("dashboard.dropAlert.at", { time: clockTime(alert.raised_at) }) : "";
  return t("dashboard.dropAlert.describe", { count: alert.count ?? 0, where, seconds: alert.window_seconds, at });
}
