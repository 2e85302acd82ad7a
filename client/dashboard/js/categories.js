// Reason categories: the deployment's tree (GET /api/v1/reason-categories), for the
// irregularity form and the command dialog, and their labels in the history. Labels come from
// the catalogues (dashboard.reason.<id>[.<sub id>]) when they know the category, else from the
// server (a deployment's own tree).

import { has, t } from "/client/i18n.js";
import { api } from "./api.js";
import { esc } from "./format.js";

let loaded = null; // Promise of {categories, required}
const known = new Map(); // path -> [top label, sub label | null] as the server names them

/** The tree and the actions that must name a category; fetched once per page. */
export function loadReasons() {
  loaded ??= api.reasonCategories().then(
    (policy) => {
      known.clear();
      for (const top of policy.categories) {
        if (!top.categories?.length) known.set(top.id, [top.label, null]);
        for (const sub of top.categories ?? []) known.set(`${top.id}/${sub.id}`, [top.label, sub.label]);
      }
      return policy;
    },
    (err) => {
      loaded = null; // try again next time
      throw err;
    },
  );
  return loaded;
}

function label(key, fallback) {
  return has(key) ? t(key) : fallback;
}

/** "Environment › Noise" for "environment/noise" (the path itself when unknown). */
export function categoryLabel(path) {
  const [top, sub] = String(path).split("/");
  const names = known.get(path);
  if (!names && !has(`dashboard.reason.${top}`)) return String(path).replaceAll("_", " ");
  const first = label(`dashboard.reason.${top}`, names?.[0] ?? top);
  return sub ? `${first} › ${label(`dashboard.reason.${top}.${sub}`, names?.[1] ?? sub)}` : first;
}

/**
 * Fill a <select> with the tree: a category with subcategories is an <optgroup> of its leaves,
 * one without is an option of its own. `placeholder` adds a first, empty option.
 */
export function fillCategorySelect(select, categories, placeholder = "") {
  const chosen = select.value;
  const parts = placeholder ? [`<option value="">${esc(placeholder)}</option>`] : [];
  for (const top of categories) {
    const topLabel = label(`dashboard.reason.${top.id}`, top.label);
    if (top.categories?.length) {
      const options = top.categories
        .map((sub) => `<option value="${esc(`${top.id}/${sub.id}`)}">${esc(label(`dashboard.reason.${top.id}.${sub.id}`, sub.label))}</option>`)
        .join("");
      parts.push(`<optgroup label="${esc(topLabel)}">${options}</optgroup>`);
    } else {
      parts.push(`<option value="${esc(top.id)}">${esc(topLabel)}</option>`);
    }
  }
  select.innerHTML = parts.join("");
  if (chosen) select.value = chosen; // a redraw in another language keeps the choice
}
