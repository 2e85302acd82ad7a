// Row indicators with thresholds (as Safe Exam Browser Server has them): round-trip time,
// time offline and client alerts, each with a warning and a danger level set per exam
// (`exam.settings.indicators`). A row is coloured by the worst level any indicator reached.

const LIVE_STATUSES = new Set(["awaiting", "active", "paused"]);
export const LEVELS = ["ok", "warning", "danger"];

/**
 * Seconds offline so far: the finished spells (`offline_seconds`, kept by the server) plus
 * the current one (`offline_since`, or the last time the candidate was heard of).
 */
export function offlineSeconds(s, nowMs) {
  let total = Number(s.offline_seconds) || 0;
  if (!s.connected && LIVE_STATUSES.has(s.status)) {
    const since = s.offline_since ?? s.last_seen;
    if (since != null) total += Math.max(0, nowMs / 1000 - since);
  }
  return total;
}

/** The value of each indicator for a session (null: nothing to judge). */
export function indicatorValues(s, nowMs) {
  return {
    rtt_ms: s.connected && s.rtt_ms != null ? s.rtt_ms : null,
    offline_seconds: LIVE_STATUSES.has(s.status) || s.offline_seconds ? offlineSeconds(s, nowMs) : null,
    alerts: s.alerts ?? 0,
  };
}

/** A value reaches a level when it is above 0 and at least its threshold (0: any at all). */
function level(value, limits) {
  if (value == null || value <= 0 || !limits) return "ok";
  if (limits.danger != null && value >= limits.danger) return "danger";
  if (limits.warning != null && value >= limits.warning) return "warning";
  return "ok";
}

/**
 * Each indicator's level and the worst one: `{rtt_ms, offline_seconds, alerts, worst}`.
 * @param {object} s the session
 * @param {object|null} thresholds `exam.settings.indicators`
 * @param {number} nowMs server time
 */
export function indicatorLevels(s, thresholds, nowMs) {
  const values = indicatorValues(s, nowMs);
  const out = { worst: "ok" };
  for (const [name, value] of Object.entries(values)) {
    const l = level(value, thresholds?.[name]);
    out[name] = l;
    if (LEVELS.indexOf(l) > LEVELS.indexOf(out.worst)) out.worst = l;
  }
  return out;
}
