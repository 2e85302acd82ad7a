// Staff notice new incidents and alerts without staring at the table.
//
// One call for every module that has something new to tell: `notifyStaff({title, text, level})`.
// It always counts the item as unseen (the tab title reads "(3) Exam · Proctor dashboard" until
// the user acknowledges them) and announces it politely to screen readers; if the user turned
// them on (off by default, remembered in localStorage), it also beeps (Web Audio) and shows a
// desktop notification while the tab is not in front (Notification API; permission is asked
// only when the user turns it on). `acknowledgeStaff()` clears the unseen count.

import { t } from "/client/i18n.js";

const SOUND_KEY = "realtime.notify.sound";
const DESKTOP_KEY = "realtime.notify.desktop";
const TITLE_COUNT = /^\(\d+\+?\) /;
const MAX_ANNOUNCED = 5; // lines kept in the live region
const BEEP_GAP_MS = 1500; // one beep for a burst, not one per item

/** Levels: how loud. "info" counts and announces; "warn" and "alert" also beep (if on), two
 * beeps for "alert". "warning" and "danger" are the same as "warn" and "alert". */
const LEVELS = { info: 0, warn: 1, warning: 1, alert: 2, danger: 2 };

const target = new EventTarget();
let unseen = 0;
let audio = null;
let lastBeep = 0;

function stored(key) {
  try {
    return localStorage.getItem(key) === "on";
  } catch {
    return false;
  }
}

function store(key, on) {
  try {
    if (on) localStorage.setItem(key, "on");
    else localStorage.removeItem(key);
  } catch {
    // private mode: the choice lasts for this page only
  }
}

/** The user's choices: `{sound, desktop}` (both off unless turned on). */
export function notifySettings() {
  return { sound: stored(SOUND_KEY), desktop: stored(DESKTOP_KEY) && desktopPermission() === "granted" };
}

function desktopPermission() {
  return typeof Notification === "undefined" ? "unsupported" : Notification.permission;
}

/** Turn the beep on or off (remembered). Turning it on also unlocks audio (a user gesture). */
export function setSound(on) {
  store(SOUND_KEY, on);
  if (on) context()?.resume?.();
  changed();
}

/**
 * Turn desktop notifications on (asks the browser's permission now, once) or off.
 * @returns {Promise<boolean>} whether they are on
 */
export async function setDesktop(on) {
  if (!on) {
    store(DESKTOP_KEY, false);
    changed();
    return false;
  }
  let permission = desktopPermission();
  if (permission === "default") permission = await Notification.requestPermission();
  const granted = permission === "granted";
  store(DESKTOP_KEY, granted);
  changed();
  return granted;
}

/** How many notified items the user has not acknowledged yet. */
export function unseenCount() {
  return unseen;
}

/** The user has seen them: clear the count (and the tab title's prefix). */
export function acknowledgeStaff() {
  if (!unseen) return;
  unseen = 0;
  renderTitle();
  changed();
}

/** Listen for changes of the count or the settings (`detail: {unseen, sound, desktop}`). */
export function onNotifyChange(fn) {
  const listener = (e) => fn(e.detail);
  target.addEventListener("change", listener);
  return () => target.removeEventListener("change", listener);
}

/**
 * Tell staff about something new.
 * @param {object} o
 * @param {string} o.title short, e.g. "Ada Lovelace: open refused"
 * @param {string} [o.text] one line of detail
 * @param {"info"|"warn"|"warning"|"alert"|"danger"} [o.level="warn"]
 */
export function notifyStaff({ title, text = "", level = "warn" }) {
  const rank = LEVELS[level] ?? LEVELS.warn;
  unseen += 1;
  renderTitle();
  announce(text ? `${title}: ${text}` : title);
  if (rank >= LEVELS.warn && stored(SOUND_KEY)) beep(rank);
  if (stored(DESKTOP_KEY) && desktopPermission() === "granted" && !inFront()) {
    try {
      const n = new Notification(title, { body: text, tag: "realtime-staff", renotify: true });
      n.onclick = () => {
        window.focus();
        n.close();
      };
    } catch {
      // some browsers only allow notifications from a service worker: the title count remains
    }
  }
  changed();
}

/** The title without our count, as the page last set it. */
function baseTitle() {
  return document.title.replace(TITLE_COUNT, "");
}

function renderTitle() {
  const base = baseTitle();
  const want = unseen ? `(${unseen > 99 ? "99+" : unseen}) ${base}` : base;
  if (document.title !== want) document.title = want;
}

// A page that changes its title (another exam) keeps the count in front of the new one.
const titleWatcher = new MutationObserver(() => {
  if (unseen && !TITLE_COUNT.test(document.title)) renderTitle();
});
function watchTitle() {
  const el = document.querySelector("title");
  if (el) titleWatcher.observe(el, { childList: true, characterData: true, subtree: true });
}
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watchTitle, { once: true });
else watchTitle();

function inFront() {
  return document.visibilityState === "visible" && document.hasFocus();
}

function announce(line) {
  let region = document.getElementById("notify-live");
  if (!region) {
    region = document.createElement("div");
    region.id = "notify-live";
    region.className = "visually-hidden";
    region.setAttribute("aria-live", "polite");
    region.setAttribute("aria-relevant", "additions");
    document.body.append(region);
  }
  const p = document.createElement("p");
  p.textContent = line;
  region.append(p);
  while (region.children.length > MAX_ANNOUNCED) region.firstElementChild.remove();
}

function context() {
  if (audio) return audio;
  const Ctx = globalThis.AudioContext ?? globalThis.webkitAudioContext;
  if (!Ctx) return null;
  try {
    audio = new Ctx();
  } catch {
    audio = null;
  }
  return audio;
}

/** A short beep (two for "alert"), at most one burst every BEEP_GAP_MS. */
function beep(rank) {
  const now = Date.now();
  if (now - lastBeep < BEEP_GAP_MS) return;
  lastBeep = now;
  const ctx = context();
  if (!ctx) return;
  const start = ctx.currentTime;
  const count = rank >= LEVELS.alert ? 2 : 1;
  for (let i = 0; i < count; i++) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "sine";
    osc.frequency.value = rank >= LEVELS.alert ? 880 : 660;
    const t = start + i * 0.25;
    gain.gain.setValueAtTime(0.0001, t);
    gain.gain.exponentialRampToValueAtTime(0.2, t + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.18);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t);
    osc.stop(t + 0.2);
  }
}

function changed() {
  target.dispatchEvent(new CustomEvent("change", { detail: { unseen, ...notifySettings() } }));
}

/**
 * Wire the dashboard's controls, if the page has them: the unseen counter button
 * (#notify-unseen, acknowledges on click) and the sound / desktop checkboxes.
 */
export function bindNotifyControls() {
  const button = document.getElementById("notify-unseen");
  const sound = document.getElementById("notify-sound");
  const desktop = document.getElementById("notify-desktop");
  const render = () => {
    const s = notifySettings();
    if (sound) sound.checked = s.sound;
    if (desktop) {
      desktop.checked = s.desktop;
      desktop.disabled = desktopPermission() === "unsupported" || desktopPermission() === "denied";
      desktop.title = desktopPermission() === "denied" ? t("dashboard.notify.blocked") : "";
    }
    if (button) {
      button.hidden = unseen === 0;
      button.querySelector(".n").textContent = String(unseen);
    }
  };
  button?.addEventListener("click", acknowledgeStaff);
  sound?.addEventListener("change", () => setSound(sound.checked));
  desktop?.addEventListener("change", async () => {
    await setDesktop(desktop.checked);
    render();
  });
  onNotifyChange(render);
  render();
}
