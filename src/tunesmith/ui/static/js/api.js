// The UI's calls to /ui/api, with the API key (kept for this browser tab only) as a Bearer header.

const KEY_STORE = "tunesmith.apiKey";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
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

async function send(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`api/${path}`, init);
  if (response.status === 401) listeners.forEach((callback) => callback());
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const payload = await response.json();
      if (payload && payload.error && payload.error.message) message = payload.error.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response;
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
