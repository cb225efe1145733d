// Playground: the same conversation sent to two models (say the base and a tuned adapter) with the
// same sampling settings, answers side by side, and the prompt exactly as the chat template renders it.

import { get, post } from "./api.js";
import { clear, el, messageView } from "./dom.js";

function numberInput(id, label, value, attrs) {
  const input = el("input", { id, type: "number", value, ...attrs });
  return [el("label", {}, label, " ", input), input];
}

function pane(side, models, selected) {
  const select = el("select", { id: `model-${side}` },
    side === "right" ? el("option", { value: "" }, "(none)") : null,
    models.map((m) => el("option", { value: m.id, selected: m.id === selected }, m.parent ? `${m.id} (adapter)` : `${m.id} (base)`)));
  const log = el("div", { id: `chat-${side}`, class: "chat-log" });
  const rendered = el("pre", { id: `rendered-${side}`, class: "rendered", hidden: true });
  const history = [];
  return { side, select, log, rendered, history, root: el("div", { class: "pane" }, el("label", {}, "Model ", select), log, rendered) };
}

export async function playgroundPage(view) {
  view.append(el("h1", {}, "Playground"));
  let models;
  try {
    models = (await get("models")).models;
  } catch (error) {
    view.append(el("p", { class: "empty" }, `No model server: ${error.message}`));
    return;
  }
  const base = models.find((m) => !m.parent) || models[0];
  const tuned = models.find((m) => m.parent);
  const left = pane("left", models, base && base.id);
  const right = pane("right", models, tuned ? tuned.id : "");
  const system = el("textarea", { id: "system-prompt", rows: 2, placeholder: "System prompt (optional)" });
  const message = el("textarea", { id: "user-message", rows: 3, placeholder: "Your message" });
  const [tempLabel, temperature] = numberInput("temperature", "temperature", "0", { min: 0, max: 2, step: 0.1 });
  const [topPLabel, topP] = numberInput("top-p", "top_p", "1", { min: 0.01, max: 1, step: 0.05 });
  const [maxLabel, maxTokens] = numberInput("max-tokens", "max_tokens", "128", { min: 1, max: 4096, step: 1 });
  const [seedLabel, seed] = numberInput("seed", "seed", "0", { min: 0, step: 1 });
  const status = el("p", { id: "playground-status", class: "muted" });
  const panes = () => [left, right].filter((p) => p.select.value);

  const conversation = (p, pending) => {
    const messages = system.value.trim() ? [{ role: "system", content: system.value }] : [];
    return [...messages, ...p.history, ...(pending ? [{ role: "user", content: pending }] : [])];
  };
  const settings = () => ({ temperature: Number(temperature.value), top_p: Number(topP.value),
    max_tokens: Number(maxTokens.value), seed: Number(seed.value) });

  const send = async () => {
    const text = message.value;
    if (!text.trim()) return;
    status.textContent = "Generating…";
    const shared = settings();
    try {
      const answers = await Promise.all(panes().map((p) =>
        post("chat", { model: p.select.value, messages: conversation(p, text), ...shared })));
      panes().forEach((p, i) => {
        p.history.push({ role: "user", content: text }, { role: "assistant", content: answers[i].content });
        clear(p.log).append(messageView(p.history));
      });
      message.value = "";
      status.textContent = "";
    } catch (error) {
      status.textContent = `Error: ${error.message}`;
    }
  };
  const showRendered = async () => {
    try {
      for (const p of panes()) {
        const out = await post("render", { model: p.select.value, messages: conversation(p, message.value || "…") });
        p.rendered.hidden = false;
        p.rendered.textContent = `${out.tokens} tokens, as ${out.model} sees them:\n\n${out.text}`;
      }
    } catch (error) {
      status.textContent = `Error: ${error.message}`;
    }
  };
  const reset = () => {
    for (const p of [left, right]) { p.history.length = 0; clear(p.log); p.rendered.hidden = true; }
  };
  [left.select, right.select].forEach((s) => s.addEventListener("change", reset));

  view.append(
    el("div", { class: "toolbar" }, tempLabel, topPLabel, maxLabel, seedLabel),
    system,
    el("div", { class: "panes" }, left.root, right.root),
    message,
    el("div", { class: "toolbar" },
      el("button", { id: "send", type: "button", onclick: send }, "Send to both"),
      el("button", { id: "show-rendered", type: "button", class: "secondary", onclick: showRendered }, "Show rendered prompt"),
      el("button", { id: "reset", type: "button", class: "secondary", onclick: reset }, "New conversation")),
    status);
}
