// The model registry: a model's versions with lineage and metrics, its aliases (canary weights,
// fallback), promote (with the gate table, also when the gate refuses), canary, rollback, and
// the alias history.

import { ApiError, get, post } from "./api.js";
import { badge, clear, el, fmt, table, when } from "./dom.js";

const short = (sha) => (sha ? String(sha).slice(0, 12) : "–");

function card(title, ...body) {
  return el("section", { class: "card" }, el("h2", {}, title), body);
}

function field(label, input) {
  return el("label", {}, label, input);
}

function splitText(route) {
  const split = Object.entries(route.split || {});
  return split.length > 1 ? split.map(([v, w]) => `@${v}: ${w}%`).join(", ") : `@${route.version}`;
}

function routeText(route) {
  if (!route) return "–";
  const weights = route.weights && Object.keys(route.weights).length
    ? Object.entries(route.weights).map(([v, w]) => `@${v}: ${w}%`).join(", ") : `@${route.version}`;
  return route.fallback !== null && route.fallback !== undefined ? `${weights} (fallback @${route.fallback})` : weights;
}

function lineage(version) {
  const chain = (version.manifest_chain || []).map((m) => `${m.stage || "?"} ${short(m.sha256)}`);
  return el("div", {},
    el("div", {}, `base ${version.base_path || "?"} (${short(version.base_sha256)})`),
    el("div", {}, `training file ${short(version.training_file_sha256)}`,
      version.validation_file_sha256 ? `, validation file ${short(version.validation_file_sha256)}` : ""),
    chain.length ? el("div", { class: "muted" }, `chain: ${chain.join(" → ")}`) : null);
}

function metricsText(metrics) {
  return Object.entries(metrics || {}).filter(([, v]) => v !== null && v !== undefined && typeof v !== "object")
    .map(([k, v]) => `${k} ${fmt(v)}`).join(", ") || "–";
}

function hyperText(hyper) {
  return Object.entries(hyper || {}).map(([k, v]) => `${k} ${typeof v === "object" ? (v.type || "…") : fmt(v)}`)
    .join(", ") || "–";
}

function versionsTable(model) {
  const pointing = (v) => model.aliases.filter((a) => Object.keys(a.split).includes(String(v)) || a.fallback === v)
    .map((a) => `${a.alias}${a.canary ? ` ${a.split[String(v)] || 0}%` : ""}${a.fallback === v ? " (fallback)" : ""}`);
  return table(["version", "created", "source", "lineage", "hyperparameters", "metrics", "aliases"],
    model.versions.map((v) => [el("strong", {}, v.ref), when(v.created_at), v.source, lineage(v),
      hyperText(v.hyperparameters), metricsText(v.metrics), pointing(v.version).join(", ") || "–"]),
    { id: "versions-table" });
}

function aliasesTable(model) {
  if (!model.aliases.length) return el("p", { class: "empty", id: "aliases-table" }, "No aliases yet: promote a version.");
  return table(["alias", "serves", "canary", "fallback", "updated"], model.aliases.map((a) =>
    [a.alias, splitText(a), a.canary ? badge("canary", "running") : "–",
      a.fallback === null ? "–" : `@${a.fallback}`, when(a.updated_at)]), { id: "aliases-table" });
}

function gateText(gate) {
  if (!gate) return "–";
  if (gate.passed) return "passed";
  return gate.overridden_by ? `refused, forced by ${gate.overridden_by}` : "refused";
}

function historyTable(history) {
  if (!history.length) return el("p", { class: "empty", id: "history-table" }, "No alias changes yet.");
  return table(["#", "when", "alias", "action", "who", "from", "to", "gate", "reason"], [...history].reverse().map((h) =>
    [fmt(h.seq), when(h.at), h.alias, h.action, h.actor, routeText(h.from_route), routeText(h.to_route),
      gateText(h.gate), h.reason || "–"]), { id: "history-table" });
}

// The gate's verdict: every metric of production and the candidate side by side.
export function gateView(gate, refusedMessage) {
  return el("div", { id: "gate-result" },
    el("p", {}, badge(gate.passed ? "gate passed" : "gate refused", gate.passed ? "passed" : "refused"), " ",
      `${gate.candidate} against ${gate.production || "nothing in production"}`),
    refusedMessage ? el("p", { class: "error" }, refusedMessage) : null,
    table(["metric", "production", "candidate", "difference", "verdict"], (gate.rows || []).map((r) =>
      [r.metric, fmt(r.production), fmt(r.candidate), r.delta === null ? "–" : (r.delta > 0 ? "+" : "") + fmt(r.delta),
        r.verdict === "ok" ? "ok" : badge(r.verdict, "refused")]), { id: "gate-table" }),
    gate.failures && gate.failures.length
      ? el("ul", { class: "gate-failures" }, gate.failures.map((f) => el("li", {}, f))) : null);
}

function actionsCard(model, gateSets, after) {
  const versions = model.versions.map((v) => v.version);
  const options = () => versions.slice().reverse().map((v) => el("option", { value: v }, `@${v}`));
  const actor = el("input", { id: "actor", placeholder: "your name (for the history)", maxlength: 64 });
  const reason = el("input", { id: "reason", placeholder: "why (for the history)", maxlength: 500 });
  const status = el("div", { id: "action-status" });
  const run = async (what, body) => {
    clear(status).append(el("p", { class: "muted" }, what === "promote" && body.gate
      ? "Evaluating the candidate and production on the gate set…" : "Working…"));
    try {
      const out = await post(`registry/${what}`, { ...body, actor: actor.value.trim() || undefined, reason: reason.value });
      clear(status).append(el("p", { id: "action-done" }, `${what}: ${out.name}@${out.route.alias} now serves ${splitText(out.route)}`));
      if (out.gate) status.append(gateView(out.gate));
    } catch (error) {
      clear(status);
      const gate = error instanceof ApiError && error.payload && error.payload.gate;
      if (gate) status.append(gateView(gate, error.message));
      else status.append(el("p", { class: "error", id: "action-error" }, error.message));
    }
    await after();
  };

  const promoteVersion = el("select", { id: "promote-version" }, options());
  const promoteAlias = el("input", { id: "promote-alias", value: "production", size: 12 });
  const gate = el("select", { id: "promote-gate" }, el("option", { value: "" }, "(no gate)"),
    gateSets.map((f) => el("option", { value: f }, f)));
  const maxDrop = el("input", { id: "promote-max-drop", type: "number", value: "0.02", min: 0, max: 1, step: 0.01 });
  const force = el("input", { id: "promote-force", type: "checkbox" });
  const canaryVersion = el("select", { id: "canary-version" }, options());
  const canaryAlias = el("input", { id: "canary-alias", value: "production", size: 12 });
  const percent = el("input", { id: "canary-percent", type: "number", value: "10", min: 1, max: 99 });
  const rollbackAlias = el("select", { id: "rollback-alias" });
  const rollback = el("button", { id: "rollback", type: "button", class: "secondary",
    onclick: () => run("rollback", { name: model.name, alias: rollbackAlias.value }) }, "Roll back");
  // After a change the aliases may differ (a promotion can create one): the list follows them.
  const aliasesChanged = (aliases) => {
    const kept = rollbackAlias.value;
    clear(rollbackAlias).append(...aliases.map((a) => el("option", { value: a.alias, selected: a.alias === kept }, a.alias)));
    rollback.disabled = !aliases.length;
  };
  aliasesChanged(model.aliases);

  const actions = card("Change an alias",
    el("div", { class: "inline-form" }, actor, reason),
    el("div", { class: "inline-form" },
      field("version", promoteVersion), field("alias", promoteAlias), field("gate set", gate),
      field("max drop", maxDrop), el("label", {}, "force", force),
      el("button", { id: "promote", type: "button", onclick: () => run("promote", {
        ref: `${model.name}@${promoteVersion.value}`, alias: promoteAlias.value.trim(), gate: gate.value || undefined,
        max_drop: Number(maxDrop.value), force: force.checked }) }, "Promote")),
    el("div", { class: "inline-form" },
      field("version", canaryVersion), field("alias", canaryAlias), field("percent", percent),
      el("button", { id: "canary", type: "button", class: "secondary", onclick: () => run("canary", {
        ref: `${model.name}@${canaryVersion.value}`, alias: canaryAlias.value.trim(), percent: Number(percent.value) }) },
      "Start canary")),
    el("div", { class: "inline-form" }, field("alias", rollbackAlias), rollback),
    status);
  return { card: actions, aliasesChanged };
}

export async function modelsPage(view, params) {
  view.append(el("h1", {}, "Models"));
  const listing = await get("registry");
  if (!listing.enabled) {
    view.append(el("p", { class: "empty", id: "registry-off" }, "This server has no model registry. Give `tunesmith ",
      "serve` a `registry:` (or a `jobs:` section, whose succeeded jobs are registered), or use `tunesmith models`."));
    return;
  }
  if (!listing.models.length) {
    view.append(el("p", { class: "empty" }, "The registry is empty: `tunesmith models add RUN_DIR` registers a run, ",
      "and every succeeded fine-tuning job is registered."));
    return;
  }
  const names = listing.models.map((m) => m.name);
  const wanted = names.includes(params.get("name")) ? params.get("name") : names[0];
  const picker = el("select", { id: "model-name" }, names.map((n) => el("option", { value: n, selected: n === wanted }, n)));
  picker.addEventListener("change", () => { location.hash = `#/models?name=${encodeURIComponent(picker.value)}`; });
  const body = el("div", {});
  view.append(el("div", { class: "toolbar" }, field("Model ", picker)), body);

  const versionsSlot = el("div", {});
  const aliasesSlot = el("div", {});
  const historySlot = el("div", {});
  let actions = null;
  const show = async (fresh) => {
    const model = (fresh ? (await get("registry")).models : listing.models).find((m) => m.name === wanted);
    const { history } = await get("registry/history", { name: wanted });
    clear(versionsSlot).append(versionsTable(model));
    clear(aliasesSlot).append(aliasesTable(model));
    clear(historySlot).append(historyTable(history));
    if (!actions) {
      actions = actionsCard(model, listing.gate_sets || [], () => show(true));
      body.append(card(`Versions of ${model.name}`, versionsSlot), card("Aliases", aliasesSlot), actions.card,
        card("Alias history", historySlot));
    }
    actions.aliasesChanged(model.aliases);
  };
  await show(false);
}
