// Message catalogues for the candidate page and the dashboard.
//
// The browser already does the hard parts (plural rules, number and date formats, time-zone
// names) through `Intl`; what is left is a key lookup, so this module stays small instead of
// pulling a framework into a client that has no build step.
//
// Catalogues are flat JSON objects in /client/locales/<lang>.json: "key": "text with {name}",
// or, for counts, "key": {"one": "…{count}…", "other": "…{count}…"} chosen by
// `Intl.PluralRules`. English is always loaded as the fallback. Static HTML carries its English
// text and a `data-i18n="key"` (text) and/or `data-i18n-attr="aria-label:key;title:key"`
// (attributes); `translate()` fills them in. Text set from JS through `localize(el, key, params)`
// is re-translated when the language changes, like the static text.

import { browserTimeZone } from "./timezone.js";

/** The complete languages, by code, each named in itself (what the switch shows). */
export const LANGUAGES = { en: "English", fr: "Français" };
export const DEFAULT_LANGUAGE = "en";
const STORE_KEY = "realtime.language";
const BASE = new URL("./locales/", import.meta.url);

let current = DEFAULT_LANGUAGE;
let messages = {};
let fallback = {};
const changes = new EventTarget();

/** The language to use: the stored choice, else the first of the browser's languages we have. */
export function chooseLanguage(stored, preferred = []) {
  if (stored && Object.hasOwn(LANGUAGES, stored)) return stored;
  for (const tag of preferred) {
    const code = String(tag).toLowerCase();
    if (Object.hasOwn(LANGUAGES, code)) return code;
    const base = code.split("-")[0];
    if (Object.hasOwn(LANGUAGES, base)) return base;
  }
  return DEFAULT_LANGUAGE;
}

function storedLanguage() {
  try {
    return localStorage.getItem(STORE_KEY);
  } catch {
    return null;
  }
}

const LOAD_TIMEOUT_MS = 5000;

async function loadCatalogue(code) {
  try {
    const response = await fetch(new URL(`${code}.json`, BASE), { signal: AbortSignal.timeout(LOAD_TIMEOUT_MS) });
    return response.ok ? await response.json() : {};
  } catch {
    return {}; // slow or failed: the page keeps its English text rather than not starting
  }
}

/** Load the chosen language (stored, else the browser's) and translate the page. */
export async function initI18n() {
  const preferred = navigator.languages?.length ? navigator.languages : [navigator.language];
  await setLanguage(chooseLanguage(storedLanguage(), preferred), { persist: false });
}

/** Switch language live: load its catalogue, re-translate the page, tell the listeners. */
export async function setLanguage(code, { persist = true } = {}) {
  if (!Object.hasOwn(LANGUAGES, code)) code = DEFAULT_LANGUAGE;
  const [main, english] = await Promise.all([
    loadCatalogue(code),
    Object.keys(fallback).length ? fallback : loadCatalogue(DEFAULT_LANGUAGE),
  ]);
  fallback = english;
  messages = main;
  current = code;
  if (persist) {
    try {
      localStorage.setItem(STORE_KEY, code);
    } catch {
      // private mode: the choice lasts for this page only
    }
  }
  document.documentElement.lang = code;
  translate(document);
  changes.dispatchEvent(new Event("change"));
}

/** The current language code ("en", "fr"). */
export function language() {
  return current;
}

/** Call `listener` after every language change (to re-render text made from data); returns
 * the function that stops it. */
export function onLanguageChange(listener) {
  changes.addEventListener("change", listener);
  return () => changes.removeEventListener("change", listener);
}

function lookup(key) {
  if (Object.hasOwn(messages, key)) return messages[key];
  if (Object.hasOwn(fallback, key)) return fallback[key];
  return undefined;
}

/** Whether the catalogues know `key` (for text that may come from the server instead). */
export function has(key) {
  return lookup(key) !== undefined;
}

/** The text for `key`, `{name}` replaced from `params`; `{count}` also picks the plural form. */
export function t(key, params = {}) {
  let text = lookup(key);
  if (text === undefined) return key;
  if (typeof text === "object") {
    const n = Number(params.count ?? 0);
    text = text[new Intl.PluralRules(current).select(n)] ?? text.other ?? "";
  }
  return text.replace(/\{(\w+)\}/g, (whole, name) => (Object.hasOwn(params, name) ? String(params[name]) : whole));
}

/**
 * A server error for the page: the server's message (English, with the details) inside the
 * page's own words for its code (`common.error.<code>`), or as it is for codes without them.
 */
export function errorText(code, message) {
  const key = `common.error.${code}`;
  return has(key) ? t(key, { detail: message ?? "" }) : message ?? "";
}

/** Set an element's text from the catalogue, and keep it translated across language changes. */
export function localize(el, key, params) {
  el.dataset.i18n = key;
  if (params && Object.keys(params).length) el.dataset.i18nParams = JSON.stringify(params);
  else delete el.dataset.i18nParams;
  el.textContent = t(key, params);
}

/** Set an element's text that is not from the catalogue (a name, a server message). */
export function plain(el, text) {
  delete el.dataset.i18n;
  delete el.dataset.i18nParams;
  el.textContent = text ?? "";
}

function paramsOf(el) {
  try {
    return el.dataset.i18nParams ? JSON.parse(el.dataset.i18nParams) : {};
  } catch {
    return {};
  }
}

/** Translate `[data-i18n]` text and `[data-i18n-attr]` attributes under `root`. */
export function translate(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    if (has(el.dataset.i18n)) el.textContent = t(el.dataset.i18n, paramsOf(el));
  }
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":").map((s) => s.trim());
      if (attr && key && has(key)) el.setAttribute(attr, t(key));
    }
  }
}

/** Fill a `<select>` with the languages and switch live when it changes. */
export function languageSwitch(select) {
  select.replaceChildren(
    ...Object.entries(LANGUAGES).map(([code, name]) => {
      const option = new Option(name, code);
      option.lang = code;
      return option;
    }),
  );
  select.value = current;
  select.addEventListener("change", () => setLanguage(select.value));
  onLanguageChange(() => {
    select.value = current;
  });
}

// -- dates and times --------------------------------------------------------------------------

/**
 * An epoch-seconds time in the current language, always with its time zone ("14:05:09 CET").
 * `date`: "auto" (only when not today), true or false; `seconds`: show seconds.
 */
export function formatTime(epochSeconds, { date = "auto", seconds = true, timeZone } = {}) {
  if (epochSeconds == null || !Number.isFinite(Number(epochSeconds))) return "—";
  const d = new Date(Number(epochSeconds) * 1000);
  const zone = timeZone || browserTimeZone();
  const dayOf = (x) => new Intl.DateTimeFormat("en-CA", { timeZone: zone, dateStyle: "short" }).format(x);
  const withDate = date === "auto" ? dayOf(d) !== dayOf(new Date()) : Boolean(date);
  const options = { timeZone: zone, hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
  if (seconds) options.second = "2-digit";
  if (withDate) Object.assign(options, { year: "numeric", month: "short", day: "numeric" });
  return new Intl.DateTimeFormat(current, options).format(d);
}

/** The short name of a zone at a moment ("CET", "GMT+1"). */
export function zoneName(timeZone = browserTimeZone(), at = new Date()) {
  const part = new Intl.DateTimeFormat(current, { timeZone, timeZoneName: "short" })
    .formatToParts(at)
    .find((p) => p.type === "timeZoneName");
  return part?.value ?? timeZone;
}
