// Small formatting helpers shared by the dashboard modules.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use inside HTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** A duration in ms as h:mm:ss or m:ss. */
export function duration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** How long ago an epoch-seconds time was, short ("12 s ago", "4 min ago"). */
export function ago(epochSeconds, nowMs) {
  if (epochSeconds == null) return "—";
  const s = Math.max(0, Math.round(nowMs / 1000 - epochSeconds));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** An epoch-seconds time as a local clock time (with date when not today). */
export function clockTime(epochSeconds) {
  if (epochSeconds == null) return "—";
  const d = new Date(epochSeconds * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString()} ${time}`;
}

const ACTION_LABELS = {
  authorize: "Authorize",
  pause: "Pause",
  resume: "Resume",
  lock: "Lock",
  unlock: "Unlock",
  terminate: "Terminate",
  extend: "Extend",
  notice: "Notice",
  acknowledge_hand: "Acknowledge hand",
};

export function actionLabel(action) {
  return ACTION_LABELS[action] ?? action;
}

/** Past tense for toasts: "Paused 3 sessions". */
export function actionDone(action) {
  return (
    {
      authorize: "Authorized",
      pause: "Paused",
      resume: "Resumed",
      lock: "Locked",
      unlock: "Unlocked",
      terminate: "Terminated",
      extend: "Extended",
      notice: "Sent the notice to",
      acknowledge_hand: "Acknowledged the raised hand of",
    }[action] ?? action
  );
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

const EVENT_LABELS = {
  created: "Created",
  opened: "Opened",
  reconnected: "Reconnected",
  refused: "Open refused",
  relocked: "Locked again on open",
  superseded: "Superseded",
  disconnected: "Disconnected",
  progress: "Progress",
  client_event: "Client alert",
  delivered: "Command delivered",
  submitted: "Submitted",
  irregularity: "Irregularity reported",
  hand_raised: "Hand raised",
  drop_alert: "Hall-wide drop alert",
};

export function eventLabel(kind) {
  return EVENT_LABELS[kind] ?? actionLabel(kind);
}

/** A `datetime-local` input's value (the browser's local time) as ISO-8601 UTC, "" for none. */
export function localToIso(value) {
  if (!value) return "";
  const d = new Date(value); // no offset: parsed as local time
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}
