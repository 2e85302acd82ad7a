// Wall-clock times in a named time zone <-> epoch seconds, for inputs that take a time "in a
// zone" (exam windows). `Intl` knows every zone's offsets (DST included) but has no parser, so
// a wall-clock time is turned into an instant by guessing with UTC and correcting by the
// zone's offset at the guess, twice (the second pass settles the days clocks change).

const WALL = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/;

/** The browser's time zone (IANA name, "Europe/Paris"). */
export function browserTimeZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

/** Every zone the browser knows, UTC first. */
export function timeZones() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return ["UTC", ...zones.filter((z) => z !== "UTC")];
}

function wallParts(ms, timeZone) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(new Date(ms));
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  return [get("year"), get("month"), get("day"), get("hour"), get("minute"), get("second")];
}

/** The zone's offset from UTC at an instant, in ms (Paris in winter: +3600000). */
export function zoneOffsetMs(ms, timeZone) {
  const [y, mo, d, h, mi, s] = wallParts(ms, timeZone);
  return Date.UTC(y, mo - 1, d, h, mi, s) - Math.floor(ms / 1000) * 1000;
}

/**
 * A `datetime-local` value ("2026-03-29T09:30") read in `timeZone`, as epoch seconds; null for
 * an empty or malformed value. A time skipped by a clock change resolves to the later offset.
 */
export function zonedToEpoch(value, timeZone = browserTimeZone()) {
  const m = WALL.exec(value ?? "");
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x ?? 0));
  const wall = Date.UTC(y, mo - 1, d, h, mi, s);
  if (Number.isNaN(wall)) return null;
  let guess = wall - zoneOffsetMs(wall, timeZone);
  guess = wall - zoneOffsetMs(guess, timeZone);
  return Math.round(guess / 1000);
}

/** Epoch seconds as a `datetime-local` value in `timeZone` ("2026-03-29T09:30"). */
export function epochToZoned(epochSeconds, timeZone = browserTimeZone()) {
  if (epochSeconds == null) return "";
  const [y, mo, d, h, mi] = wallParts(Number(epochSeconds) * 1000, timeZone);
  const p = (n) => String(n).padStart(2, "0");
  return `${y}-${p(mo)}-${p(d)}T${p(h)}:${p(mi)}`;
}

/** "UTC+01:00" for a zone's offset now. */
export function offsetLabel(timeZone, at = Date.now()) {
  const minutes = Math.round(zoneOffsetMs(at, timeZone) / 60000);
  const sign = minutes < 0 ? "−" : "+";
  const abs = Math.abs(minutes);
  return `UTC${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
}

/** Fill a `<select>` with the zones ("Europe/Paris (UTC+01:00)"), choosing `selected`. */
export function fillZoneSelect(select, selected = browserTimeZone()) {
  const now = Date.now();
  select.replaceChildren(...timeZones().map((zone) => new Option(`${zone} (${offsetLabel(zone, now)})`, zone)));
  select.value = timeZones().includes(selected) ? selected : "UTC";
}
