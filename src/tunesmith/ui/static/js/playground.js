// Playground: the same conversation sent to two models (say the base and a tuned adapter) with the
// same sampling settings, answers side by side as they stream in token by token (Stop aborts
// both), and the prompt exactly as the chat template renders it.

import { get, post, streamChat } from "./api.js";
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

// The answer being written: shown as it grows, styled as an assistant message, but marked pending
// (role-pending) until it is complete and joins the conversation.
function pendingAnswer(log) {
  const text = el("div", { class: "text" });
  log.append(el("div", { class: "message role-pending streaming" }, el("span", { class: "role" }, "assistant"), text));
  return text;
}

export async function playgroundPage(view, state = {}) {
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

  const stop = el("button", { id: "stop", type: "button", class: "secondary", disabled: true }, "Stop");
  const send = async () => {
    const text = message.value;
    if (!text.trim() || state.abort) return;
    const shared = settings();
    const active = panes();
    const controller = new AbortController();
    state.abort = controller;
    stop.disabled = false;
    view.dataset.streaming = "true";
    status.textContent = "Generating…";
    message.value = "";
    const results = await Promise.allSettled(active.map(async (p) => {
      const messages = conversation(p, text);
      p.history.push({ role: "user", content: text });
      clear(p.log).append(messageView(p.history));
      const shown = pendingAnswer(p.log);
      let partial = "";
      try {
        return await streamChat({ model: p.select.value, messages, ...shared },
          (sofar) => { partial = sofar; shown.textContent = sofar; }, controller.signal);
      } catch (error) {
        if (error.name === "AbortError") return partial; // stopped: keep what was written
        p.history.pop();
        throw error;
      } finally {
        shown.parentElement.remove();
      }
    }));
    active.forEach((p, i) => {
      if (results[i].status === "fulfilled") p.history.push({ role: "assistant", content: results[i].value });
      clear(p.log).append(messageView(p.history));
    });
    const failed = results.find((r) => r.status === "rejected");
    status.textContent = failed ? `Error: ${failed.reason.message}` : controller.signal.aborted ? "Stopped." : "";
    if (failed && !message.value) message.value = text;
    state.abort = null;
    stop.disabled = true;
    view.dataset.streaming = "false";
  };
  stop.addEventListener("click", () => { if (state.abort) state.abort.abort(); });
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
      el("button", { id: "send", type: "button", onclick: send }, "Send to both"), stop,
      el("button", { id: "show-rendered", type: "button", class: "secondary", onclick: showRendered }, "Show rendered prompt"),
      el("button", { id: "reset", type: "button", class: "secondary", onclick: reset }, "New conversation")),
    status);
}
