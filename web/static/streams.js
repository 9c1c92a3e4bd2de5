// The streams list with their state, adding a pulled stream (POST /api/streams), removing one.

import { getJSON, request, sendJSON } from "./api.js";
import { rememberedStream, selectStream, state } from "./state.js";
import { $, el, emit, fmtDuration, on, showError, toast } from "./ui.js";

const STATE_TEXT = {
  live: "live", connecting: "connecting", retrying: "retrying", stopped: "stopped",
  pending: "waiting for ingest", unknown: "no report",
};

export function stateLabel(row) {
  if (row.stale) return "ingest not reporting";
  return STATE_TEXT[row.state] ?? row.state;
}

const unseen = new Map(); // stream -> alerts that arrived while another stream was shown

function renderList() {
  const list = $("#stream-list");
  const names = [...state.streams.keys()].sort();
  $("#stream-empty").hidden = names.length > 0;
  const existing = new Map([...list.children].map((li) => [li.dataset.stream, li]));
  for (const name of existing.keys()) if (!state.streams.has(name)) existing.get(name).remove();
  names.forEach((name, i) => {
    const row = state.streams.get(name);
    let li = existing.get(name);
    if (!li) {
      li = el("li", { dataset: { stream: name } },
        el("button", { type: "button", class: "stream-item", onclick: () => selectStream(name) },
          el("span", { class: "stream-name" }, name),
          el("span", { class: "badge" }),
          el("span", { class: "stream-meta" }),
          el("span", { class: "count", hidden: true })));
    }
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] ?? null);
    const button = li.firstElementChild;
    button.setAttribute("aria-current", String(name === state.selected));
    const badge = button.querySelector(".badge");
    badge.textContent = stateLabel(row);
    badge.dataset.state = row.stale ? "stale" : row.state;
    button.querySelector(".stream-meta").textContent =
      row.clips ? `${row.clips} clips · ${fmtDuration(row.span_s)}` : "no clips yet";
    const count = button.querySelector(".count");
    const n = unseen.get(name) ?? 0;
    count.hidden = n === 0;
    count.textContent = n ? `${n} new alert${n === 1 ? "" : "s"}` : "";
    button.setAttribute("aria-label", `${name}: ${stateLabel(row)}, ${row.clips} clips${n ? `, ${n} new alerts` : ""}`);
  });
}

function renderHead() {
  const row = state.selected ? state.streams.get(state.selected) : null;
  $("#stream-title").textContent = state.selected ?? "No stream selected";
  const badge = $("#stream-state");
  badge.hidden = !row;
  $("#stream-remove").hidden = !row;
  if (row) {
    badge.textContent = stateLabel(row);
    badge.dataset.state = row.stale ? "stale" : row.state;
  }
  $("#stream-error").textContent = row?.error && row.state !== "live" ? row.error : "";
}

/** Replace the known rows with `rows` (the full list, from the API or /ws). */
export function setStreams(rows) {
  const before = new Map(state.streams);
  state.streams = new Map(rows.map((r) => [r.name, r]));
  renderList();
  renderHead();
  emit("streams-changed", { before, after: state.streams });
  if (state.selected && before.has(state.selected) && !state.streams.has(state.selected)) {
    // deleted elsewhere (a camera being published is not listed yet: it was never in `before`)
    toast(`Stream ${state.selected} was removed.`, "info");
    state.selected = null;
  }
  if (!state.selected && rows.length) {
    const remembered = rememberedStream();
    selectStream(state.streams.has(remembered) ? remembered : rows[0].name);
  }
}

export async function loadStreams() {
  const body = await getJSON("/api/streams");
  setStreams(body.streams);
}

async function addStream(event) {
  event.preventDefault();
  const form = event.target;
  const error = $("#add-stream-error");
  error.textContent = "";
  const nameInput = $("#add-stream-name");
  const urlInput = $("#add-stream-url");
  const name = nameInput.value.trim();
  const url = urlInput.value.trim();
  if (!name || !nameInput.checkValidity()) {
    error.textContent = "Give the stream a name: letters, digits, _ . - (starting with a letter or digit).";
    nameInput.focus();
    return;
  }
  if (!url) {
    error.textContent = "Give the stream's URL (rtsp://, http(s):// or an HLS playlist).";
    urlInput.focus();
    return;
  }
  try {
    const row = await sendJSON("/api/streams", "POST", { name, url });
    state.streams.set(row.name, row);
    setStreams([...state.streams.values()]);
    selectStream(row.name);
    form.reset();
    toast(`Stream ${row.name} added: an ingest process picks it up within a few seconds.`, "info");
  } catch (err) {
    error.textContent = err.message;
  }
}

async function removeStream() {
  const name = state.selected;
  if (!name) return;
  const ok = window.confirm(`Remove stream ${name} and delete its memory? This cannot be undone.`);
  if (!ok) return;
  try {
    await request(`/api/streams/${encodeURIComponent(name)}`, { method: "DELETE" });
    state.streams.delete(name);
    state.selected = null;
    setStreams([...state.streams.values()]);
    if (!state.streams.size) emit("stream-selected", null);
    toast(`Stream ${name} removed.`, "info");
  } catch (err) {
    showError(err, `Cannot remove ${name}`);
  }
}

export function installStreams() {
  $("#add-stream-form").addEventListener("submit", addStream);
  $("#stream-remove").addEventListener("click", removeStream);
  on("status", (payload) => setStreams(payload.streams));
  on("stream-selected", (name) => {
    unseen.delete(name);
    renderList();
    renderHead();
  });
  on("live-event", ({ stream, event }) => {
    if (stream === state.selected || event.kind !== "start") return;
    unseen.set(stream, (unseen.get(stream) ?? 0) + 1);
    renderList();
  });
}
