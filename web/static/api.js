// The HTTP API (docs/web.md): bearer token, JSON errors as ApiError, server-sent events over fetch.

import { emit } from "./ui.js";

const TOKEN_KEY = "flashlive.token";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** The bearer token, kept for this tab only (sessionStorage). */
export const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export function authHeaders(headers = {}) {
  const t = token.get();
  return t ? { ...headers, Authorization: `Bearer ${t}` } : { ...headers };
}

/** The API's error shape ({"error": {code, message}}) as an ApiError, whatever the body holds. */
export async function errorFrom(res) {
  let code = `http_${res.status}`;
  let message = `${res.status} ${res.statusText || "error"}`;
  try {
    const body = await res.json();
    if (body?.error?.message) {
      code = body.error.code || code;
      message = body.error.message;
    }
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  const err = new ApiError(res.status, code, message, res.headers.get("Retry-After"));
  if (res.status === 401) emit("unauthorized", err);
  return err;
}

/**
 * fetch() with the token; a 4xx/5xx becomes an ApiError with the server's message, a network failure
 * an ApiError with code "network". Returns the Response.
 */
export async function request(path, { method = "GET", json, body, headers = {}, signal, keepalive } = {}) {
  const h = json !== undefined ? { "Content-Type": "application/json", ...headers } : headers;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: authHeaders(h),
      body: json !== undefined ? JSON.stringify(json) : body,
      signal,
      keepalive,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "cannot reach the FlashLive server (network error)");
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export function sendJSON(path, method, json, options = {}) {
  return request(path, { ...options, method, json }).then((res) => res.json());
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Server-sent events of a fetch Response: yields {event, data, id} (comments skipped). The parser
 * follows the EventSource rules (data lines joined with "\n", blank line ends an event).
 */
export async function* readEvents(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (event.data.length) yield { event: event.event, data: event.data.join("\n"), id: event.id };
          event = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// -- thumbnails ----------------------------------------------------------------------------------

/**
 * Thumbnails for <img> elements. Without a token the browser loads them itself (and caches them: they
 * are immutable). With one, an <img> cannot send the header, so they are fetched with it and shown as
 * blob URLs, a few at a time, and only once the image scrolls into view.
 */
class Thumbnails {
  constructor() {
    this.cache = new Map(); // url -> blob URL (insertion order: oldest first)
    this.waiting = [];
    this.running = 0;
    this.limit = 6;
    this.max = 600;
    this.observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        this.observer.unobserve(entry.target);
        this.enqueue(entry.target);
      }
    }, { rootMargin: "200px" });
  }

  show(img, url) {
    img.dataset.src = url;
    if (!token.get()) {
      img.loading = "lazy";
      img.src = url;
      return;
    }
    const cached = this.cache.get(url);
    if (cached) {
      img.src = cached;
      return;
    }
    this.observer.observe(img);
  }

  enqueue(img) {
    this.waiting.push(img);
    this.pump();
  }

  pump() {
    while (this.running < this.limit && this.waiting.length) {
      const img = this.waiting.shift();
      const url = img.dataset.src;
      if (!img.isConnected || !url) continue;
      this.running += 1;
      this.fetchOne(url)
        .then((blobUrl) => {
          if (img.dataset.src === url) img.src = blobUrl;
        })
        .catch(() => img.classList.add("missing"))
        .finally(() => {
          this.running -= 1;
          this.pump();
        });
    }
  }

  async fetchOne(url) {
    const hit = this.cache.get(url);
    if (hit) return hit;
    const res = await request(url);
    const blobUrl = URL.createObjectURL(await res.blob());
    this.cache.set(url, blobUrl);
    if (this.cache.size > this.max) {
      const [oldUrl, oldBlob] = this.cache.entries().next().value;
      this.cache.delete(oldUrl);
      URL.revokeObjectURL(oldBlob);
    }
    return blobUrl;
  }
}

export const thumbnails = new Thumbnails();
