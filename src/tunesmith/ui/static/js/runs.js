// Runs: the workspace's stage directories, one run's page (live curves while it trains, config,
// reports, manifest chain) and two evaluations side by side.

import { get, workspaceImage } from "./api.js";
import { drawLineChart } from "./chart.js";
import { badge, el, fmt, link, messageView, pct, table, when } from "./dom.js";

const POLL_MS = 2000;
const runHash = (id) => `#/run?path=${encodeURIComponent(id)}`;

export async function runsPage(view) {
  const { workspace, runs } = await get("runs");
  view.append(el("h1", {}, "Runs"), el("p", { class: "muted" }, `Workspace ${workspace}`));
  if (!runs.length) {
    view.append(el("p", { class: "empty" }, "No training runs, evaluations or prepared datasets here yet. ",
      "Start the UI in the directory you train in, or pass --workspace DIR."));
    return;
  }
  const rows = runs.map((r) => [
    link(r.id, runHash(r.id)), r.kind, badge(r.status), r.kind === "train" ? fmt(r.step) : "–",
    r.kind === "train" ? fmt(r.loss) : r.kind === "eval" ? `${fmt(r.examples)} examples` :
      r.kind === "data" ? `${fmt(r.kept)} of ${fmt(r.read)} kept (${r.format || "?"})` : "–",
    r.updated ? when(r.updated) : "–",
  ]);
  view.append(table(["directory", "kind", "status", "step", "loss / summary", "updated"], rows, { id: "runs-table" }));
}

function section(title, ...body) {
  return el("section", { class: "card" }, el("h2", {}, title), body);
}

function lossSeries(records) {
  return [
    { label: "train loss", points: records.filter((r) => "loss" in r).map((r) => [r.step, r.loss]) },
    { label: "validation loss", points: records.filter((r) => "val_loss" in r).map((r) => [r.step, r.val_loss]) },
  ];
}

function trainCharts(run, state) {
  const lossCanvas = el("canvas", { id: "loss-chart", class: "chart" });
  const lrCanvas = el("canvas", { id: "lr-chart", class: "chart" });
  const stats = el("p", { id: "train-stats", class: "stats" });
  const records = [];
  let offset = 0;
  const redraw = () => {
    drawLineChart(lossCanvas, lossSeries(records), { xLabel: "optimiser step", yLabel: "loss", title: "Loss" });
    drawLineChart(lrCanvas, [{ label: "learning rate", points: records.filter((r) => "lr" in r).map((r) => [r.step, r.lr]) }],
      { xLabel: "optimiser step", yLabel: "learning rate", title: "Learning rate" });
    const last = [...records].reverse().find((r) => "loss" in r);
    const diverged = records.find((r) => "nonfinite" in r);
    stats.textContent = last ? `step ${last.step} · loss ${fmt(last.loss)} · lr ${fmt(last.lr)} · ` +
      `${fmt(last.tokens_per_s)} tokens/s · ${fmt(last.trained_tokens)} tokens trained` : "no steps logged yet";
    if (diverged) stats.textContent += ` · diverged at step ${diverged.step} (${diverged.nonfinite})`;
  };
  const poll = async () => {
    const chunk = await get("metrics", { path: run.id, offset });
    if (chunk.reset) records.length = 0;
    records.push(...chunk.records);
    offset = chunk.offset;
    redraw();
  };
  state.start = async () => {
    await poll();
    if (run.status !== "running") return;
    // While the run trains, metrics.jsonl grows: read only the new lines, and check the status
    // now and then so polling stops once the run has finished.
    let ticks = 0;
    state.timer = setInterval(async () => {
      try {
        await poll();
        if (++ticks % 5 === 0 && (await get("run", { path: run.id })).status !== "running") {
          clearInterval(state.timer);
          document.getElementById("run-status")?.replaceChildren(badge("finished"));
        }
      } catch (error) { clearInterval(state.timer); }
    }, POLL_MS);
  };
  return section("Training curves", stats, el("div", { class: "charts" }, lossCanvas, lrCanvas));
}

function metricTable(columns, metricsByColumn, id) {
  const names = [...new Set(metricsByColumn.flatMap((m) => Object.keys(m || {})))];
  const rows = names.map((name) => {
    const values = metricsByColumn.map((m) => (m || {})[name]);
    const delta = values.length === 2 && typeof values[0] === "number" && typeof values[1] === "number"
      ? values[1] - values[0] : null;
    return [name, ...values.map((v) => fmt(v)), delta === null ? "–" : (delta > 0 ? "+" : "") + fmt(delta)];
  });
  return table(["metric", ...columns, "difference"], rows, { id, class: "metrics" });
}

function evalSections(run) {
  const m = run.metrics || {};
  const parts = [];
  const columns = m.base ? ["base", "tuned"] : ["tuned"];
  const values = m.base ? [m.base, m.tuned] : [m.tuned];
  parts.push(section(`Evaluation of ${m.model || "?"} on ${fmt(m.examples)} examples`,
    el("p", {}, `Task: ${(m.task || {}).kind || "?"}; data ${m.data || "?"}`),
    metricTable(columns, values, "eval-metrics"),
    m.win_rate ? el("p", { class: "stats" }, `Per-example wins on ${m.win_rate.metric}: tuned ${pct(m.win_rate.tuned_win_rate)}, ` +
      `base ${pct(m.win_rate.base_win_rate)}, ties ${pct(m.win_rate.tie_rate)}`) : null,
    el("div", { class: "images" }, run.files.filter((f) => f.endsWith(".png")).map((f) => workspaceImage(f, f)))));
  if (run.samples && run.samples.length) {
    parts.push(section(`Samples (first ${run.samples.length})`, samplesTable(run.samples)));
  }
  return parts;
}

function samplesTable(samples) {
  const hasBase = samples.some((s) => "base_output" in s);
  return table(["#", "prompt", "reference", "tuned", ...(hasBase ? ["base", "winner"] : [])],
    samples.map((s) => [s.index, messageView(s.prompt || []), el("div", { class: "output" }, s.reference),
      el("div", { class: "output" }, s.tuned_output),
      ...(hasBase ? [el("div", { class: "output" }, s.base_output), s.winner || "–"] : [])]), { class: "samples" });
}

// A stage record's inputs: named lists ({"examples": [...]}), or a plain list in older manifests.
function inputs(manifest) {
  const recorded = manifest.inputs || [];
  return Array.isArray(recorded) ? recorded : Object.values(recorded).flat();
}

function dataSections(run) {
  const manifest = run.manifest || {};
  const counts = manifest.counts || {};
  const length = (manifest.length || {}).summary || {};
  const splits = counts.splits || {};
  return [section("Data preparation report",
    el("p", { class: "stats" }, `${fmt(counts.kept)} of ${fmt(counts.read)} examples kept as ${counts.kind || "?"} ` +
      `(train ${fmt(splits.train)}, val ${fmt(splits.val)}, test ${fmt(splits.test)}); ${fmt(counts.truncated)} truncated; ` +
      `${fmt(counts.examples_with_pii)} with personal data redacted`),
    table(["file", "format", "records", "kept", "rejected"], inputs(manifest).map((i) =>
      [i.path, i.format, fmt(i.records), fmt(i.kept), fmt(i.rejected)]), { id: "data-inputs" }),
    el("h3", {}, "Examples left after each step"),
    table(["step", "examples"], (counts.funnel || []).map(([step, n]) => [step, fmt(n)])),
    el("h3", {}, "Rejected"),
    Object.keys(counts.rejected || {}).length
      ? table(["rule", "count"], Object.entries(counts.rejected).map(([rule, n]) => [rule, fmt(n)]))
      : el("p", {}, "None."),
    el("h3", {}, `Length (${(manifest.length || {}).unit || "?"})`),
    table(["min", "mean", "p50", "p90", "p99", "max"], [["min", "mean", "p50", "p90", "p99", "max"].map((k) => fmt(length[k]))]),
    el("div", { class: "images" }, run.files.filter((f) => f.endsWith(".png")).map((f) => workspaceImage(f, f))),
    run.report ? el("details", {}, el("summary", {}, "report.md"), el("pre", {}, run.report)) : null)];
}

function chainSection(run) {
  const items = run.chain.map((node) => el("li", {},
    link(node.id, runHash(node.id)), " ", badge(node.stage || "?", "stage"), " ", when(node.created),
    node.inputs.length ? el("span", { class: "muted" }, ` made from ${node.inputs.join(", ")}`) : null,
    node.base_model ? el("span", { class: "muted" }, ` · base model ${node.base_model}`) : null));
  return section("Manifest chain", el("ol", { id: "manifest-chain", class: "chain" }, items));
}

export async function runPage(view, params, state) {
  const run = await get("run", { path: params.get("path") });
  view.append(el("h1", {}, run.id, " ", badge(run.kind, "kind")),
    el("p", {}, "Status: ", el("span", { id: "run-status" }, badge(run.status)),
      run.created ? ` · started ${when(run.created)}` : "", run.method ? ` · method ${run.method}` : ""));
  if (run.kind === "train") view.append(trainCharts(run, state));
  if (run.kind === "eval") view.append(...evalSections(run));
  if (run.kind === "data") view.append(...dataSections(run));
  view.append(chainSection(run));
  if (run.config) view.append(section("Config", el("pre", { id: "run-config" }, run.config)));
  if (run.manifest) {
    view.append(section("Manifest", el("details", {}, el("summary", {}, "manifest.json"),
      el("pre", {}, JSON.stringify(run.manifest, null, 2)))));
  }
  const lossPng = run.kind === "train" && run.files.find((f) => f.split("/").pop() === "loss.png");
  if (lossPng) view.append(section("loss.png (written at the end of training)", workspaceImage(lossPng, "loss.png")));
  if (state.start) await state.start();
}

export async function comparePage(view, params) {
  const { runs } = await get("runs");
  const evals = runs.filter((r) => r.kind === "eval");
  view.append(el("h1", {}, "Compare evaluations"));
  if (!evals.length) {
    view.append(el("p", { class: "empty" }, "No evaluations (directories with metrics.json) in this workspace."));
    return;
  }
  const options = (selected, extra) => [...extra, ...evals.map((r) => el("option", { value: r.id, selected: r.id === selected }, r.id))];
  const pickA = el("select", { id: "compare-a" }, options(params.get("a") || evals[0].id, []));
  const pickB = el("select", { id: "compare-b" }, options(params.get("b") || "", [el("option", { value: "" }, "(its base model)")]));
  const go = () => { location.hash = `#/compare?a=${encodeURIComponent(pickA.value)}&b=${encodeURIComponent(pickB.value)}`; };
  pickA.addEventListener("change", go);
  pickB.addEventListener("change", go);
  view.append(el("div", { class: "toolbar" }, el("label", {}, "Evaluation ", pickA), el("label", {}, "against ", pickB)));
  const a = await get("run", { path: pickA.value });
  const ma = a.metrics || {};
  if (!pickB.value) {
    if (!ma.base) {
      view.append(el("p", { class: "empty" }, `${a.id} was evaluated without --compare-base; pick a second evaluation.`));
      return;
    }
    view.append(section(`${a.id}: base vs tuned`, metricTable(["base", "tuned"], [ma.base, ma.tuned], "compare-table")));
    if (a.samples.length) view.append(section("Samples", samplesTable(a.samples)));
    return;
  }
  const b = await get("run", { path: pickB.value });
  const mb = b.metrics || {};
  view.append(section(`${a.id} vs ${b.id}`,
    el("p", { class: "muted" }, `${a.id}: ${ma.model || "?"} on ${ma.data || "?"} · ${b.id}: ${mb.model || "?"} on ${mb.data || "?"}`),
    metricTable([a.id, b.id], [ma.tuned, mb.tuned], "compare-table")));
  const byIndex = new Map(b.samples.map((s) => [s.index, s]));
  const pairs = a.samples.filter((s) => byIndex.has(s.index));
  if (pairs.length) {
    view.append(section("Samples side by side", table(["#", "prompt", a.id, b.id], pairs.map((s) =>
      [s.index, messageView(s.prompt || []), el("div", { class: "output" }, s.tuned_output),
        el("div", { class: "output" }, byIndex.get(s.index).tuned_output)]), { class: "samples" })));
  }
}
