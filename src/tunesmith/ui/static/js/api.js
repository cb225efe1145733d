// The UI's calls to /ui/api, with the API key (kept for this browser tab only) as a Bearer header.

const KEY_STORE = "tunesmith.apiKey";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message, payload = null) {
    super(message);
    this.status = status;
    this.payload = payload; // the error body, e.g. {error: {message, code, param}, gate: {...}}
  }
}

// Where the page reaches the server's OpenAI routes: on `tunesmith serve` its own /v1 (the page
// lives at /ui/), from a standalone UI the UI's forwarder (another origin is out of bounds).
let openaiBase = "api/openai/v1/";
let info = null;

// /ui/api/info, read once (after the key is known): version, mounted, limits, what the server offers.
export async function uiInfo() {
  if (!info) {
    info = await get("info");
    openaiBase = info.mounted ? "../v1/" : "api/openai/v1/";
  }
  return info;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

export function onUnauthorized(callback) {
  listeners.add(callback);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function checked(response) {
  if (response.status === 401) listeners.forEach((callback) => callback());
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let payload = null;
    try {
      payload = await response.json();
      if (payload && payload.error && payload.error.message) message = payload.error.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message, payload);
  }
  return response;
}

async function send(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  return checked(await fetch(`api/${path}`, init));
}

// The server's OpenAI routes (files, fine-tuning jobs, chat): `init.body` may be FormData or a
// JSON-able object; `init.signal` aborts.
export async function openai(method, path, { body, params, signal } = {}) {
  const query = params ? `?${new URLSearchParams(params)}` : "";
  const init = { method, headers: headers(), signal };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return checked(await fetch(`${openaiBase}${path}${query}`, init));
}

// A streamed chat completion: calls onDelta(text) for each piece of the answer as the server
// sends it (server-sent events, read from the response body), resolves with the whole answer.
export async function streamChat(body, onDelta, signal) {
  const response = await openai("POST", "chat/completions", { body: { ...body, stream: true }, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const events = buffered.split(/\r?\n\r?\n/);
    buffered = events.pop();
    let piece = "";
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || "the stream failed", chunk);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && typeof delta.content === "string") piece += delta.content;
    }
    if (piece) {
      answer += piece;
      onDelta(answer);
    }
  }
  return answer;
}

// The raw bytes of a file sent to one /ui/api route (the file check).
export async function postFile(path, file, params = {}) {
  const response = await fetch(`api/${path}?${new URLSearchParams(params)}`, {
    method: "POST", headers: headers({ "Content-Type": "application/octet-stream" }), body: file });
  return (await checked(response)).json();
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  return (await send("GET", query ? `${path}?${query}` : path)).json();
}

export async function post(path, body) {
  return (await send("POST", path, body)).json();
}

export async function blob(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  const response = await send("GET", query ? `${path}?${query}` : path);
  return { blob: await response.blob(), headers: response.headers };
}

// An image file of the workspace as an <img>: fetched with the key, shown from a blob: URL.
export function workspaceImage(path, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  img.className = "report-image";
  blob("file", { path }).then(({ blob: data }) => { img.src = URL.createObjectURL(data); })
    .catch((error) => { img.alt = `${alt} (${error.message})`; });
  return img;
}
