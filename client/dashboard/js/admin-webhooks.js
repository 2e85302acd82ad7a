// The Webhooks page (webhooks.manage): subscriptions (create, send test, enable/disable,
// delete) and the chosen one's delivery log (status, attempts, last error, next attempt; retry),
// refreshed every few seconds while shown. A new subscription's secret is shown once.

import { api } from "./api.js";
import { localize, plain, t } from "/client/i18n.js";
import { clockTime, esc } from "./format.js";
import { toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
export const REFRESH_MS = 2000;

let bound = false;
let selected = null; // the subscription whose log is shown
let refreshNow = () => {};

function examLabel(sub) {
  return sub.exam_id ? esc(sub.exam_id) : `<span class="flag">${esc(t("dashboard.webhooks.everyExam"))}</span>`;
}

function kindsLabel(kinds) {
  return kinds.length ? esc(kinds.join(", ")) : `<span class="muted">${esc(t("dashboard.webhooks.everyKind"))}</span>`;
}

function subscriptionRow(sub) {
  const c = sub.counts ?? {};
  const isSelected = sub.id === selected;
  return `<tr data-sub="${esc(sub.id)}" data-active="${sub.active}"${isSelected ? ' aria-selected="true" class="selected"' : ""}>
    <td data-col="url"><span class="mono small-text">${esc(sub.url)}</span>${sub.description ? `<br><span class="muted">${esc(sub.description)}</span>` : ""}</td>
    <td data-col="exam">${examLabel(sub)}</td>
    <td data-col="kinds" class="details-cell" translate="no">${kindsLabel(sub.kinds)}</td>
    <td data-col="state">${sub.active
      ? `<span class="badge node-alive">${esc(t("dashboard.webhooks.active"))}</span>`
      : `<span class="badge node-dead">${esc(t("dashboard.webhooks.disabled"))}</span>`}</td>
    <td class="num" data-col="pending">${c.pending ?? 0}</td>
    <td class="num" data-col="delivered">${c.delivered ?? 0}</td>
    <td class="num" data-col="failed">${c.failed ?? 0}</td>
    <td><div class="row-actions">
      <button type="button" class="btn small" data-act="test">${esc(t("dashboard.webhooks.sendTest"))}</button>
      <button type="button" class="btn small" data-act="log" aria-pressed="${isSelected}">${esc(t("dashboard.webhooks.whLogTitle"))}</button>
      <button type="button" class="btn small" data-act="toggle">${esc(t(sub.active ? "dashboard.webhooks.disable" : "dashboard.webhooks.enable"))}</button>
      <button type="button" class="btn small danger" data-act="delete">${esc(t("dashboard.webhooks.delete"))}</button>
    </div></td>
  </tr>`;
}

function deliveryRow(d) {
  const where = d.exam_id ? `${esc(d.exam_id)} <span class="muted">#${esc(d.seq)}</span>` : "—";
  const next = d.status === "pending" && d.next_attempt_at ? esc(clockTime(d.next_attempt_at)) : "—";
  const retry = d.status === "delivered" ? "" : `<button type="button" class="btn small" data-retry="${esc(d.id)}">${esc(t("dashboard.top.retryNow"))}</button>`;
  const history = (d.errors ?? []).map((e) => `${e.attempt}: ${e.error}`).join("\n");
  return `<tr data-delivery="${esc(d.id)}" data-status="${esc(d.status)}">
    <td class="nowrap" data-col="created">${esc(clockTime(d.created_at))}</td>
    <td data-col="kind" translate="no">${esc(d.kind)}</td>
    <td data-col="where">${where}</td>
    <td data-col="status"><span class="badge wh-${esc(d.status)}">${esc(t(`dashboard.webhooks.st.${d.status}`))}</span></td>
    <td class="num" data-col="attempts">${esc(d.attempts)}</td>
    <td class="details-cell" data-col="error" title="${esc(history)}">${esc(d.last_error || "—")}</td>
    <td class="nowrap" data-col="next">${next}</td>
    <td>${retry}</td>
  </tr>`;
}

async function loadExams() {
  try {
    const { exams } = await api.listExams();
    const select = $("wh-exam");
    const current = select.value;
    select.innerHTML =
      `<option value="" data-i18n="dashboard.webhooks.everyExam">${esc(t("dashboard.webhooks.everyExam"))}</option>` + exams.map((e) => `<option value="${esc(e.id)}">${esc(e.title)} (${esc(e.id)})</option>`).join("");
    select.value = exams.some((e) => e.id === current) ? current : "";
  } catch (err) {
    toast(t("dashboard.exams.loadFailed", { error: err.message }), "error");
  }
}

function renderKinds(kinds) {
  const box = $("wh-kinds");
  if (box.dataset.filled) return;
  box.dataset.filled = "1";
  box.innerHTML = kinds
    .map((k) => `<label class="check"><input type="checkbox" name="kind" value="${esc(k)}"> ${esc(k)}</label>`)
    .join("");
}

async function refresh(stopped) {
  let body;
  try {
    body = await api.webhooks();
  } catch (err) {
    if (!stopped()) plain($("wh-status"), t("dashboard.webhooks.loadFailed", { error: err.message }));
    return;
  }
  if (stopped()) return;
  renderKinds(body.kinds);
  const subs = body.subscriptions;
  if (selected && !subs.some((s) => s.id === selected)) selected = null;
  localize($("wh-status"), "dashboard.webhooks.count", { count: subs.length, seconds: REFRESH_MS / 1000 });
  $("wh-rows").innerHTML =
    subs.map(subscriptionRow).join("") || `<tr><td colspan="8" class="empty-state">${esc(t("dashboard.webhooks.none"))}</td></tr>`;
  const log = $("wh-log");
  log.hidden = !selected;
  if (!selected) return;
  const sub = subs.find((s) => s.id === selected);
  plain($("wh-log-title"), `${t("dashboard.webhooks.whLogTitle")} · ${sub.url}`);
  try {
    const { deliveries } = await api.webhookDeliveries(selected);
    if (stopped()) return;
    $("wh-log-rows").innerHTML =
      deliveries.map(deliveryRow).join("") || `<tr><td colspan="8" class="empty-state">${esc(t("dashboard.webhooks.noDeliveries"))}</td></tr>`;
  } catch (err) {
    if (!stopped()) $("wh-log-rows").innerHTML = `<tr><td colspan="8">${esc(t("dashboard.webhooks.logFailed", { error: err.message }))}</td></tr>`;
  }
}

async function onCreate(event) {
  event.preventDefault();
  const form = event.target;
  const error = $("wh-form-error");
  error.hidden = true;
  const kinds = [...form.querySelectorAll('input[name="kind"]:checked')].map((i) => i.value);
  const body = {
    url: $("wh-url").value.trim(),
    exam_id: $("wh-exam").value || null,
    kinds,
    description: $("wh-description").value.trim(),
  };
  try {
    const created = await api.createWebhook(body);
    $("wh-secret-value").textContent = created.secret;
    $("wh-secret").hidden = false;
    form.reset();
    selected = created.id;
    toast(t("dashboard.webhooks.createdToast"), "ok");
    refreshNow();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

async function onRowAction(event) {
  const retry = event.target.closest("button[data-retry]");
  if (retry) {
    try {
      await api.retryWebhookDelivery(selected, retry.dataset.retry);
      toast(t("dashboard.webhooks.sendingAgain"), "ok");
    } catch (err) {
      toast(t("dashboard.webhooks.retryFailed", { error: err.message }), "error");
    }
    refreshNow();
    return;
  }
  const button = event.target.closest("button[data-act]");
  if (!button) return;
  const row = button.closest("tr[data-sub]");
  const id = row.dataset.sub;
  try {
    if (button.dataset.act === "test") {
      await api.testWebhook(id);
      selected = id;
      toast(t("dashboard.webhooks.testQueued"), "ok");
    } else if (button.dataset.act === "log") {
      selected = selected === id ? null : id;
    } else if (button.dataset.act === "toggle") {
      await api.updateWebhook(id, { active: row.dataset.active !== "true" });
    } else if (button.dataset.act === "delete") {
      if (!confirm(t("dashboard.webhooks.confirmDelete"))) return;
      await api.deleteWebhook(id);
      if (selected === id) selected = null;
      toast(t("dashboard.webhooks.deleted"), "ok");
    }
  } catch (err) {
    toast(err.message, "error");
  }
  refreshNow();
}

function bind() {
  bound = true;
  $("wh-form").addEventListener("submit", onCreate);
  $("wh-rows").addEventListener("click", onRowAction);
  $("wh-log-rows").addEventListener("click", onRowAction);
  $("wh-secret-close").addEventListener("click", () => {
    $("wh-secret").hidden = true;
    $("wh-secret-value").textContent = "";
  });
}

/** Show the page; returns the function that stops its refreshing (called on navigation). */
export function showWebhooks() {
  if (!bound) bind();
  let timer = null;
  let stopped = false;
  const isStopped = () => stopped;
  refreshNow = () => {
    clearTimeout(timer);
    loop();
  };
  async function loop() {
    await refresh(isStopped);
    if (!stopped) {
      clearTimeout(timer);
      timer = setTimeout(loop, REFRESH_MS);
    }
  }
  localize($("wh-status"), "dashboard.common.loading");
  loadExams();
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
    $("wh-secret").hidden = true;
    $("wh-secret-value").textContent = "";
  };
}
