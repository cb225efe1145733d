// Fine-tuning jobs, through the server's own OpenAI routes (/v1/files, /v1/fine_tuning/jobs):
// upload a file (every problem shown by line first), create a job, list jobs, and one job's page
// with its events and loss curve as they arrive, and a cancel button.

import { ApiError, openai, postFile, uiInfo } from "./api.js";
import { drawLineChart } from "./chart.js";
import { badge, clear, el, fmt, link, table, when } from "./dom.js";

const ACTIVE = ["validating_files", "queued", "running", "paused"];
const FINISHED = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1000;
const STATUS_STYLE = { succeeded: "finished", failed: "diverged", cancelled: "incomplete", running: "running",
  queued: "queued", validating_files: "queued", paused: "incomplete" };
const jobHash = (id) => `#/job/${encodeURIComponent(id)}`;

function statusBadge(status) {
  return badge(status, STATUS_STYLE[status] || status);
}

function card(title, ...body) {
  return el("section", { class: "card" }, el("h2", {}, title), body);
}

function field(label, input) {
  return el("label", {}, label, input);
}

async function jobsApi(view) {
  const info = await uiInfo();
  const off = () => view.append(el("p", { class: "empty", id: "jobs-off" },
    "This server has no fine-tuning jobs API. Start `tunesmith serve` with a `jobs:` section (docs/jobs.md)."));
  if (info.jobs === false) { off(); return null; }
  try {
    return await openai("GET", "fine_tuning/jobs", { params: { limit: 100 } }).then((r) => r.json());
  } catch (error) {
    if (error.status === 404) { off(); return null; }
    throw error;
  }
}

// ---------------------------------------------------------------- upload with the line-by-line check

function problemsTable(problems) {
  return table(["line", "rule", "problem", "how to fix", "refused at"], problems.map((p) =>
    [p.line === null ? "–" : fmt(p.line), el("code", {}, p.rule), p.detail, p.fix || "–",
      p.stage === "upload" ? "upload" : "job start"]), { id: "check-problems" });
}

function uploadCard(onUploaded) {
  const file = el("input", { id: "upload-file", type: "file", accept: ".jsonl,application/jsonl,application/x-ndjson" });
  const method = el("select", { id: "upload-method" }, el("option", { value: "supervised" }, "supervised (chat rows)"),
    el("option", { value: "dpo" }, "dpo (preference rows)"));
  const result = el("div", { id: "upload-result" });
  const upload = async () => {
    const chosen = file.files[0];
    clear(result);
    if (!chosen) { result.append(el("p", { class: "error" }, "Choose a .jsonl file first.")); return; }
    const info = await uiInfo();
    const summary = el("p", { id: "check-summary", class: "stats" }, "Checking every line…");
    const status = el("p", { id: "upload-status" });
    result.append(summary);
    if (chosen.size <= info.max_body_bytes) {
      try {
        const check = await postFile("check-file", chosen, { method: method.value, filename: chosen.name });
        summary.textContent = `${fmt(check.lines)} lines, ${fmt(check.examples)} good ${method.value} examples, ` +
          `${fmt(check.problems.length)}${check.truncated ? "+" : ""} problems.`;
        if (check.problems.length) result.append(problemsTable(check.problems));
      } catch (error) {
        summary.textContent = `The line-by-line check failed: ${error.message}`;
      }
    } else {
      summary.textContent = `The file is larger than ${fmt(info.max_body_bytes)} bytes, so it is not checked line by ` +
        "line here; the server checks it on upload and when a job starts, and names the first broken line.";
    }
    result.append(status);
    status.textContent = "Uploading…";
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", chosen, chosen.name);
    try {
      const made = await (await openai("POST", "files", { body: form })).json();
      status.className = "";
      status.textContent = `Uploaded as ${made.id} (${fmt(made.bytes)} bytes).`;
      onUploaded(made);
    } catch (error) {
      status.className = "error";
      status.textContent = `The server refused the upload: ${error.message}`;
    }
  };
  return card("Upload a training file",
    el("div", { class: "toolbar" }, file, field("Check as ", method),
      el("button", { id: "upload-button", type: "button", onclick: upload }, "Check and upload")),
    el("p", { class: "muted" }, "Every line is checked with the rules the server applies: a line that is not a JSON ",
      "object makes the upload fail, a row that breaks a data rule makes the job fail when it starts."),
    result);
}

// ---------------------------------------------------------------- creating a job

function numberOrAuto(input) {
  const text = input.value.trim();
  return !text || text === "auto" ? "auto" : Number(text);
}

function createCard(files, models) {
  const fineTune = files.filter((f) => f.purpose === "fine-tune");
  const fileOptions = (withNone) => [withNone ? el("option", { value: "" }, "(none)") : null,
    fineTune.map((f) => el("option", { value: f.id }, `${f.filename} (${f.id})`))];
  const bases = models.filter((m) => !m.parent).map((m) => m.id);
  const model = el("input", { id: "job-model", list: "job-model-options", value: bases[0] || "" });
  const training = el("select", { id: "job-training" }, fileOptions(false));
  const validation = el("select", { id: "job-validation" }, fileOptions(true));
  const method = el("select", { id: "job-method" }, el("option", { value: "supervised" }, "supervised"),
    el("option", { value: "dpo" }, "dpo"));
  const auto = (id) => el("input", { id, value: "auto", size: 6 });
  const epochs = auto("job-epochs");
  const batch = auto("job-batch");
  const lr = auto("job-lr");
  const beta = auto("job-beta");
  const betaLabel = field("beta (dpo)", beta);
  const suffix = el("input", { id: "job-suffix", maxlength: 64, placeholder: "optional" });
  const seed = el("input", { id: "job-seed", type: "number", min: 0, placeholder: "random" });
  const status = el("p", { id: "job-create-status" });
  const showBeta = () => { betaLabel.hidden = method.value !== "dpo"; };
  method.addEventListener("change", showBeta);
  showBeta();
  const create = async () => {
    const hyperparameters = { n_epochs: numberOrAuto(epochs), batch_size: numberOrAuto(batch),
      learning_rate_multiplier: numberOrAuto(lr) };
    if (method.value === "dpo") hyperparameters.beta = numberOrAuto(beta);
    const body = { model: model.value.trim(), training_file: training.value,
      method: { type: method.value, [method.value]: { hyperparameters } } };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value !== "") body.seed = Number(seed.value);
    status.className = "";
    status.textContent = "Creating…";
    try {
      const job = await (await openai("POST", "fine_tuning/jobs", { body })).json();
      location.hash = jobHash(job.id);
    } catch (error) {
      const param = error.payload && error.payload.error && error.payload.error.param;
      status.className = "error";
      status.textContent = `Refused${param ? ` (${param})` : ""}: ${error.message}`;
    }
  };
  return card("Create a job",
    fineTune.length ? null : el("p", { class: "empty" }, "Upload a training file first."),
    el("datalist", { id: "job-model-options" }, bases.map((b) => el("option", { value: b }))),
    el("div", { class: "form-grid" }, field("base model", model), field("training file", training),
      field("validation file", validation), field("method", method), field("n_epochs", epochs),
      field("batch_size", batch), field("learning_rate_multiplier", lr), betaLabel, field("suffix", suffix),
      field("seed", seed)),
    el("button", { id: "job-create", type: "button", onclick: create, disabled: !fineTune.length }, "Create job"),
    status);
}

function jobsTable(jobs) {
  return table(["job", "model", "method", "status", "fine-tuned model", "created"], jobs.map((j) =>
    [link(j.id, jobHash(j.id)), j.model, (j.method || {}).type || "supervised", statusBadge(j.status),
      j.fine_tuned_model || "–", when(j.created_at)]), { id: "jobs-table" });
}

export async function jobsPage(view, state) {
  view.append(el("h1", {}, "Fine-tuning jobs"));
  const listing = await jobsApi(view);
  if (!listing) return;
  const [files, models] = await Promise.all([
    openai("GET", "files", { params: { purpose: "fine-tune" } }).then((r) => r.json()),
    openai("GET", "models").then((r) => r.json()).catch(() => ({ data: [] }))]);
  const createSlot = el("div", {}, createCard(files.data, models.data));
  const jobsSlot = el("div", {}, listing.data.length ? jobsTable(listing.data) : el("p", { class: "empty" }, "No jobs yet."));
  view.append(uploadCard(async () => {
    const fresh = (await (await openai("GET", "files", { params: { purpose: "fine-tune" } })).json()).data;
    clear(createSlot).append(createCard(fresh, models.data));
  }), createSlot, card("Jobs", jobsSlot));
  // While a job is unfinished, the list refreshes its statuses.
  state.timer = setInterval(async () => {
    try {
      const jobs = (await (await openai("GET", "fine_tuning/jobs", { params: { limit: 100 } })).json()).data;
      clear(jobsSlot).append(jobs.length ? jobsTable(jobs) : el("p", { class: "empty" }, "No jobs yet."));
      if (!jobs.some((j) => ACTIVE.includes(j.status))) clearInterval(state.timer);
    } catch (_) { clearInterval(state.timer); }
  }, 3 * POLL_MS);
}

// ---------------------------------------------------------------- one job

function lossSeries(events) {
  const metrics = events.filter((e) => e.type === "metrics" && e.data).sort((a, b) => a.data.step - b.data.step);
  return [
    { label: "training loss", points: metrics.filter((e) => typeof e.data.train_loss === "number").map((e) => [e.data.step, e.data.train_loss]) },
    { label: "validation loss", points: metrics.filter((e) => typeof e.data.valid_loss === "number").map((e) => [e.data.step, e.data.valid_loss]) },
  ];
}

function detailsTable(job) {
  const hyper = ((job.method || {})[(job.method || {}).type] || {}).hyperparameters || job.hyperparameters || {};
  return table(["", ""], [
    ["model", job.model], ["method", (job.method || {}).type || "supervised"],
    ["hyperparameters", Object.entries(hyper).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")],
    ["training file", job.training_file], ["validation file", job.validation_file || "–"],
    ["fine-tuned model", job.fine_tuned_model || "–"], ["trained tokens", fmt(job.trained_tokens)],
    ["seed", fmt(job.seed)], ["created", when(job.created_at)], ["finished", when(job.finished_at)],
    ["estimated finish", when(job.estimated_finish)],
  ], { id: "job-details", class: "details" });
}

// Every event of the job, fetched newest first and merged by id: a poll pages back (with `after`)
// until it meets an event it already has.
async function newEvents(jobId, known) {
  const found = [];
  let after = null;
  for (;;) {
    const params = { limit: 100 };
    if (after) params.after = after;
    const page = await (await openai("GET", `fine_tuning/jobs/${encodeURIComponent(jobId)}/events`, { params })).json();
    const fresh = page.data.filter((e) => !known.has(e.id));
    found.push(...fresh);
    if (!page.has_more || fresh.length < page.data.length || !page.data.length) return found;
    after = page.data[page.data.length - 1].id;
  }
}

export async function jobPage(view, jobId, state) {
  const path = `fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  let job = await (await openai("GET", path)).json();
  const statusSlot = el("span", { id: "job-status" }, statusBadge(job.status));
  const detailsSlot = el("div", {}, detailsTable(job));
  const errorSlot = el("div", { id: "job-error" });
  const cancel = el("button", { id: "job-cancel", type: "button", class: "secondary" }, "Cancel job");
  const actionStatus = el("span", { id: "job-action-status", class: "muted" });
  const chart = el("canvas", { id: "job-loss-chart", class: "chart" });
  const stats = el("p", { id: "job-loss-stats", class: "stats" });
  const eventsSlot = el("div", {});
  const checkpointsSlot = el("div", {});
  const known = new Set();
  let list = []; // newest first, as the server lists them

  const render = () => {
    clear(statusSlot).append(statusBadge(job.status));
    clear(detailsSlot).append(detailsTable(job));
    clear(errorSlot);
    if (job.error && job.error.message) {
      errorSlot.append(el("p", { class: "error" }, `${job.error.code || "error"}${job.error.param ? ` (${job.error.param})` : ""}: `,
        job.error.message));
    }
    cancel.hidden = !ACTIVE.includes(job.status);
    const series = lossSeries(list);
    drawLineChart(chart, series, { xLabel: "step", yLabel: "loss", title: "Loss" });
    const last = series[0].points[series[0].points.length - 1];
    stats.textContent = last ? `step ${last[0]} · training loss ${fmt(last[1])}` : "no steps logged yet";
    clear(eventsSlot).append(table(["time", "level", "message"], list.map((e) =>
      [when(e.created_at), e.level, el("span", { class: "text" }, e.message)]), { id: "job-events" }));
  };
  const poll = async () => {
    job = await (await openai("GET", path)).json();
    const fresh = await newEvents(jobId, known);
    fresh.forEach((e) => known.add(e.id));
    list = [...fresh, ...list];
    render();
    if (FINISHED.includes(job.status)) {
      const checkpoints = (await (await openai("GET", `${path}/checkpoints`, { params: { limit: 100 } })).json()).data;
      clear(checkpointsSlot).append(checkpoints.length ? table(["step", "model", "training loss"], checkpoints.map((c) =>
        [fmt(c.step_number), c.fine_tuned_model_checkpoint, fmt((c.metrics || {}).train_loss)]), { id: "job-checkpoints" })
        : el("p", { class: "empty" }, "No checkpoints."));
    }
  };
  cancel.addEventListener("click", async () => {
    actionStatus.textContent = "Cancelling…";
    try {
      job = await (await openai("POST", `${path}/cancel`)).json();
      actionStatus.textContent = "";
      await poll();
    } catch (error) {
      actionStatus.textContent = error instanceof ApiError ? error.message : String(error);
    }
  });
  view.append(el("h1", {}, "Job ", jobId, " ", statusSlot),
    el("div", { class: "toolbar" }, link("← all jobs", "#/jobs"), cancel, actionStatus),
    errorSlot, card("Job", detailsSlot), card("Training loss", stats, chart),
    card("Events", eventsSlot), card("Checkpoints", checkpointsSlot));
  await poll();
  if (FINISHED.includes(job.status)) return;
  // Poll while the job runs; after it finishes, one last read (its final events), then stop.
  let busy = false;
  state.timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      await poll();
      if (FINISHED.includes(job.status)) clearInterval(state.timer);
    } catch (_) {
      clearInterval(state.timer);
    } finally {
      busy = false;
    }
  }, POLL_MS);
}
