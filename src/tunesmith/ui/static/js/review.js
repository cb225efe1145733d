// Blind A/B review: create a review (two models, a prompt set), vote on anonymised pairs, see win
// rates with 95% intervals, export the decided pairs as a preference dataset for DPO.

import { blob, get, post } from "./api.js";
import { clear, el, fmt, link, messageView, pct, table, when } from "./dom.js";

const REVIEWER_STORE = "tunesmith.reviewer";

export async function reviewListPage(view) {
  view.append(el("h1", {}, "Blind review"));
  const { reviews } = await get("reviews");
  view.append(el("section", { class: "card" }, el("h2", {}, "Reviews"), reviews.length
    ? table(["review", "models (1 vs 2)", "prompts", "items", "votes", "created", ""], reviews.map((r) => [
      link(r.title, `#/review/${encodeURIComponent(r.id)}`), `${r.model_1} vs ${r.model_2}`, r.prompt_file,
      fmt(r.items), fmt(r.votes), when(r.created), link("results", `#/review/${encodeURIComponent(r.id)}/results`)]),
    { id: "reviews-table" })
    : el("p", { class: "empty" }, "No reviews yet.")));
  view.append(await createForm());
}

async function createForm() {
  const card = el("section", { class: "card" }, el("h2", {}, "New review"));
  let models = [];
  let files = [];
  try {
    [models, files] = await Promise.all([get("models").then((r) => r.models), get("prompt-sets").then((r) => r.files)]);
  } catch (error) {
    card.append(el("p", { class: "empty" }, `Cannot start a review: ${error.message}`));
    return card;
  }
  const option = (m) => el("option", { value: m.id }, m.id);
  const model1 = el("select", { id: "review-model-1" }, models.map(option));
  const model2 = el("select", { id: "review-model-2" }, models.map(option));
  const base = models.find((m) => !m.parent);
  const tuned = models.find((m) => m.parent);
  if (base) model1.value = base.id;
  if (tuned) model2.value = tuned.id;
  const promptFile = el("select", { id: "review-prompts" }, files.map((f) => el("option", { value: f }, f)));
  const title = el("input", { id: "review-title", type: "text", placeholder: "title (optional)" });
  const limit = el("input", { id: "review-limit", type: "number", value: "20", min: 1, max: 200 });
  const temperature = el("input", { id: "review-temperature", type: "number", value: "0", min: 0, max: 2, step: 0.1 });
  const maxTokens = el("input", { id: "review-max-tokens", type: "number", value: "128", min: 1, max: 4096 });
  const seed = el("input", { id: "review-seed", type: "number", value: "0", min: 0 });
  const status = el("p", { id: "review-create-status", class: "muted" });
  const create = async () => {
    status.textContent = "Generating both models' answers through the server…";
    try {
      const made = await post("reviews", { title: title.value, model_1: model1.value, model_2: model2.value,
        prompt_file: promptFile.value, limit: Number(limit.value), temperature: Number(temperature.value),
        max_tokens: Number(maxTokens.value), seed: Number(seed.value) });
      location.hash = `#/review/${encodeURIComponent(made.id)}`;
    } catch (error) {
      status.textContent = `Error: ${error.message}`;
    }
  };
  card.append(
    el("p", { class: "muted" }, "Model 1 is the baseline, model 2 the candidate: win rates are model 2's. ",
      "Reviewers never see which model wrote which answer."),
    el("div", { class: "form-grid" },
      el("label", {}, "Model 1 (baseline) ", model1), el("label", {}, "Model 2 (candidate) ", model2),
      el("label", {}, "Prompt set ", promptFile), el("label", {}, "Prompts ", limit),
      el("label", {}, "temperature ", temperature), el("label", {}, "max_tokens ", maxTokens),
      el("label", {}, "seed ", seed), el("label", {}, "Title ", title)),
    el("button", { id: "review-create", type: "button", onclick: create }, "Generate and start"), status);
  return card;
}

export async function reviewSessionPage(view, reviewId) {
  const results = await get(`reviews/${encodeURIComponent(reviewId)}/results`);
  view.append(el("h1", {}, results.title), el("p", { class: "muted" },
    `${results.items} prompts from ${results.prompt_file}. The two answers are shown in a random order; `,
    "pick the better one. ", link("Results", `#/review/${encodeURIComponent(reviewId)}/results`)));
  const reviewer = el("input", { id: "reviewer", type: "text", maxlength: 64, placeholder: "your name",
    value: localStorage.getItem(REVIEWER_STORE) || "" });
  const body = el("div", { id: "review-item" });
  view.append(el("div", { class: "toolbar" }, el("label", {}, "Reviewer ", reviewer),
    el("button", { id: "reviewer-start", type: "button", onclick: () => show() }, "Start")), body);

  async function vote(item, choice, comment) {
    await post(`reviews/${encodeURIComponent(reviewId)}/votes`, { reviewer: reviewer.value, item, choice, comment });
    await show();
  }

  async function show() {
    clear(body);
    if (!reviewer.value.trim()) {
      body.append(el("p", { class: "empty" }, "Type your name to start."));
      return;
    }
    localStorage.setItem(REVIEWER_STORE, reviewer.value.trim());
    let next;
    try {
      next = await get(`reviews/${encodeURIComponent(reviewId)}/next`, { reviewer: reviewer.value });
    } catch (error) {
      body.append(el("p", { class: "error" }, error.message));
      return;
    }
    const progress = el("p", { id: "review-progress", class: "stats" }, `${next.done_count} of ${next.total} done`);
    if (next.done) {
      body.append(progress, el("p", { id: "review-done" }, "All done, thank you. ",
        link("See the results", `#/review/${encodeURIComponent(reviewId)}/results`)));
      return;
    }
    const comment = el("textarea", { id: "vote-comment", rows: 2, placeholder: "comment (optional)" });
    const button = (choice, text) => el("button", { type: "button", id: `vote-${choice}`,
      onclick: () => vote(next.item, choice, comment.value) }, text);
    body.append(progress, el("section", { class: "card" }, el("h2", {}, "Prompt"), messageView(next.prompt)),
      el("div", { class: "panes" },
        el("section", { class: "card pane" }, el("h2", {}, "Answer A"), el("div", { id: "answer-a", class: "output" }, next.a)),
        el("section", { class: "card pane" }, el("h2", {}, "Answer B"), el("div", { id: "answer-b", class: "output" }, next.b))),
      comment,
      el("div", { class: "toolbar" }, button("A", "A is better"), button("B", "B is better"), button("tie", "Tie"),
        button("both_bad", "Both bad")));
  }
  await show();
}

function tallyRow(name, t) {
  return [name, fmt(t.votes), fmt(t.model_2), fmt(t.model_1), fmt(t.tie), fmt(t.both_bad), pct(t.win_rate),
    t.ci_low === null ? "–" : `${pct(t.ci_low)} – ${pct(t.ci_high)}`];
}

export async function reviewResultsPage(view, reviewId) {
  const r = await get(`reviews/${encodeURIComponent(reviewId)}/results`);
  view.append(el("h1", {}, `Results: ${r.title}`),
    el("p", {}, `Model 1 (baseline): ${r.model_1} · model 2 (candidate): ${r.model_2} · ${r.items} prompts from ${r.prompt_file}`),
    el("p", { class: "muted", id: "results-method" }, `${r.method}.`));
  const headers = ["reviewer", "votes", `${r.model_2} wins`, `${r.model_1} wins`, "ties", "both bad",
    `${r.model_2} win rate`, "95% interval"];
  const rows = [tallyRow("all reviewers", r.overall), ...Object.entries(r.reviewers).map(([n, t]) => tallyRow(n, t))];
  view.append(table(headers, rows, { id: "results-table" }));
  const download = el("a", { id: "export-link", hidden: true }, "");
  const status = el("span", { id: "export-status", class: "muted" });
  const exportVotes = async () => {
    const { blob: data, headers: h } = await blob(`reviews/${encodeURIComponent(reviewId)}/export`);
    download.href = URL.createObjectURL(data);
    download.download = `${reviewId}-preferences.jsonl`;
    download.hidden = false;
    download.textContent = `Download ${download.download}`;
    status.textContent = ` ${h.get("X-Tunesmith-Rows")} preference pairs; left out: ${h.get("X-Tunesmith-Skipped")}`;
  };
  view.append(el("section", { class: "card" }, el("h2", {}, "Preference dataset"),
    el("p", {}, "Each prompt that reviewers decided (more votes for one answer than the other) becomes a ",
      "prompt/chosen/rejected row, which `tunesmith data prepare` reads as preference data for DPO."),
    el("div", { class: "toolbar" }, el("button", { id: "export", type: "button", onclick: exportVotes }, "Export votes"),
      download, status)));
}
