// The page's router: #/runs, #/run?path=..., #/compare, #/playground, #/review[/ID[/results]],
// #/jobs, #/job/ID, #/models[?name=...].

import { apiKey, onUnauthorized, setApiKey, uiInfo } from "./api.js";
import { clear, el } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { modelsPage } from "./models.js";
import { playgroundPage } from "./playground.js";
import { reviewListPage, reviewResultsPage, reviewSessionPage } from "./review.js";
import { comparePage, runPage, runsPage } from "./runs.js";

const view = document.getElementById("view");
const notice = document.getElementById("notice");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
let pageState = {};

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

onUnauthorized(() => {
  keyForm.hidden = false;
  showNotice(apiKey() ? "The API key was refused. Enter the server's key." : "This server needs an API key.");
});

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyInput.value.trim());
  keyInput.value = "";
  keyForm.hidden = true;
  showNotice("");
  route();
});

function parse(hash) {
  const [path, query] = (hash.replace(/^#/, "") || "/runs").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

async function route() {
  if (pageState.timer) clearInterval(pageState.timer);
  if (pageState.abort) pageState.abort.abort();
  pageState = {};
  const { parts, params } = parse(location.hash);
  const section = parts[0] || "runs";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.section === section ||
    (section === "run" && a.dataset.section === "runs") || (section === "job" && a.dataset.section === "jobs")));
  clear(view);
  const page = el("div", { class: "page", "data-page": section });
  view.append(page);
  try {
    await uiInfo();
    if (section === "run") await runPage(page, params, pageState);
    else if (section === "compare") await comparePage(page, params);
    else if (section === "playground") await playgroundPage(page, pageState);
    else if (section === "jobs") await jobsPage(page, pageState);
    else if (section === "job" && parts[1]) await jobPage(page, parts[1], pageState);
    else if (section === "models") await modelsPage(page, params);
    else if (section === "review" && parts[1] && parts[2] === "results") await reviewResultsPage(page, parts[1]);
    else if (section === "review" && parts[1]) await reviewSessionPage(page, parts[1]);
    else if (section === "review") await reviewListPage(page);
    else await runsPage(page);
    page.dataset.ready = "true";
  } catch (error) {
    page.append(el("p", { class: "error" }, error.message));
    page.dataset.ready = "error";
  }
}

async function start() {
  try {
    const info = await uiInfo();
    if (info.auth_required && !apiKey()) keyForm.hidden = false;
    document.title = `tunesmith ${info.version}`;
  } catch (error) {
    if (error.status !== 401) showNotice(error.message);
  }
  window.addEventListener("hashchange", route);
  await route();
}

start();
