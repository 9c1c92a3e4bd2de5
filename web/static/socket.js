// The WebSocket /ws (docs/web.md): status every 2 s and watch events, resumed after a reconnect from
// the last event id seen per stream, so an alert is neither lost nor shown twice.

import { token } from "./api.js";
import { compareIds, emit } from "./ui.js";

const RETRY_MS = [500, 1000, 2000, 4000, 8000];
// RFC 6455 subprotocols are HTTP tokens; a token with other characters goes in the query string
const PROTOCOL_SAFE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export class LiveSocket {
  constructor() {
    this.ws = null;
    this.cursors = new Map(); // stream -> last event entry id seen
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.connection = "connecting";
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Close and connect again at once (after the token changed). */
  restart() {
    this.close();
    this.failures = 0;
    this.start();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, "bye");
      this.ws = null;
    }
  }

  /** Events after `id` of `stream` were seen (history): the socket resumes after it. */
  seen(stream, id) {
    const have = this.cursors.get(stream);
    if (!have || compareIds(id, have) > 0) this.cursors.set(stream, id);
  }

  /** Ask again for the events of every known stream after the last id seen (no gap, no repeat). */
  resume() {
    this.send("subscribe", { channel: "events", streams: null, after: Object.fromEntries(this.cursors) });
  }

  send(topic, payload) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ topic, payload }));
  }

  setConnection(state) {
    this.connection = state;
    emit("connection", state);
  }

  open() {
    const url = new URL("/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const t = token.get();
    let protocols;
    if (t && PROTOCOL_SAFE.test(t)) protocols = [`bearer.${t}`];
    else if (t) url.searchParams.set("token", t);
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    ws.onopen = () => {
      this.failures = 0;
      this.setConnection("live");
      this.send("subscribe", { channel: "status" });
      this.resume();
    };
    ws.onmessage = (message) => this.receive(message.data);
    ws.onclose = (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this.failures += 1;
      const wait = RETRY_MS[Math.min(this.failures - 1, RETRY_MS.length - 1)];
      this.setConnection(close.code === 1013 ? "catching up…" : "reconnecting…");
      this.timer = setTimeout(() => this.open(), wait);
    };
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const { topic, payload } = message;
    if (topic === "status") emit("status", payload);
    else if (topic === "event") {
      const have = this.cursors.get(payload.stream);
      if (have && compareIds(payload.id, have) <= 0) return; // already shown
      this.cursors.set(payload.stream, payload.id);
      emit("live-event", payload);
    } else if (topic === "answer") emit("answer", payload);
    else if (topic === "error") emit("socket-error", payload);
  }
}
