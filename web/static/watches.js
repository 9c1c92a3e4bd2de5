// Watches (standing questions): add and remove them, see their scores, and their alerts: the
// history (GET /api/events) and live ones over /ws. One alert card per occurrence (start, updates,
// end share its id), newest first.

import { getJSON, query, request, sendJSON, thumbnails } from "./api.js";
import { state } from "./state.js";
import { $, compareIds, el, fmtDuration, fmtTime, on, showError } from "./ui.js";

const HISTORY_PAGE = 1000;
const HISTORY_PAGES = 10; // at most this many pages of history are read per stream
const SHOWN = 100; // occurrence cards kept
const REFRESH_MS = 5000; // the watch list (scores, evaluations) while the page is visible

const occurrences = new Map(); // occurrence id -> {card, event, stream, lastEntry, origin}
const KEPT = 2000; // occurrences remembered (cards of streams not shown are rebuilt from these)
let watches = [];
let refreshTimer = null;
let reloadTimer = null;

// -- the watch list ------------------------------------------------------------------------------

function watchItem(w) {
  const s = w.state;
  const score = s.score === null ? "not evaluated yet" : `score ${(s.score * 100).toFixed(0)}%`;
  const status = s.active ? "firing" : s.evaluations ? "quiet" : "waiting for a clip";
  return el("li", { class: "watch", dataset: { watch: w.id, active: String(s.active) } },
    el("div", { class: "watch-text" },
      el("span", { class: "condition" }, w.condition),
      el("span", { class: "watch-meta" },
        `${status} · ${score} · threshold ${(w.threshold * 100).toFixed(0)}% · ${s.evaluations} checks`)),
    el("button", {
      type: "button", class: "ghost small danger", "aria-label": `Remove the watch “${w.condition}”`,
      onclick: () => removeWatch(w),
    }, "Remove"));
}

function renderWatches() {
  const list = $("#watch-list");
  list.replaceChildren(...watches.map(watchItem));
  if (!watches.length && state.selected) {
    list.append(el("li", { class: "muted" }, "No watch on this stream."));
  }
}

async function loadWatches() {
  const stream = state.selected;
  if (!stream) {
    watches = [];
    renderWatches();
    return;
  }
  try {
    const body = await getJSON(`/api/watches${query({ stream })}`);
    if (state.selected !== stream) return;
    watches = body.watches.sort((a, b) => a.created - b.created);
    renderWatches();
  } catch (err) {
    showError(err, "Cannot load the watches");
  }
}

function scheduleRefresh() {
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => {
    if (document.visibilityState === "visible") loadWatches();
  }, REFRESH_MS);
}

function numberInput(input) {
  const value = Number(input.value);
  if (input.value === "" || !Number.isFinite(value) || !input.checkValidity()) {
    throw new Error(`${input.labels[0].textContent}: give a number from ${input.min} to ${input.max}`);
  }
  return value;
}

async function addWatch(event) {
  event.preventDefault();
  const error = $("#watch-error");
  error.textContent = "";
  const stream = state.selected;
  const input = $("#watch-condition");
  const condition = input.value.trim();
  if (!stream) {
    error.textContent = "Choose a stream first.";
    return;
  }
  if (!condition) {
    error.textContent = "Describe what to watch for.";
    input.focus();
    return;
  }
  let threshold;
  let cooldown;
  try {
    threshold = numberInput($("#watch-threshold"));
    cooldown = numberInput($("#watch-cooldown"));
  } catch (err) {
    error.textContent = err.message;
    return;
  }
  const button = $("#watch-button");
  button.disabled = true;
  try {
    const watch = await sendJSON("/api/watches", "POST", { stream, condition, threshold, cooldown });
    if (state.selected === stream) {
      watches.push(watch);
      renderWatches();
    }
    input.value = "";
  } catch (err) {
    error.textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

async function removeWatch(w) {
  try {
    await request(`/api/watches/${encodeURIComponent(w.id)}`, { method: "DELETE" });
    watches = watches.filter((x) => x.id !== w.id);
    renderWatches();
  } catch (err) {
    showError(err, "Cannot remove the watch");
    loadWatches();
  }
}

// -- alerts --------------------------------------------------------------------------------------

function alertCard(stream, event) {
  const img = el("img", { alt: "", width: 96, height: 54 });
  const card = el("li", { class: "alert", tabindex: "-1" },
    el("button", {
      type: "button", class: "alert-jump",
      "aria-label": `Show this alert on the timeline: ${event.condition}`,
      onclick: () => jump(stream, card),
    }, img,
    el("span", { class: "alert-text" },
      el("span", { class: "condition" }, event.condition),
      el("span", { class: "alert-meta" }))));
  card.img = img;
  return card;
}

function paintAlert(entry) {
  const { card, event, stream } = entry;
  const ongoing = event.kind !== "end";
  card.dataset.occurrence = event.id;
  card.dataset.watch = event.watch;
  card.dataset.kind = event.kind;
  card.dataset.origin = entry.origin;
  card.dataset.stream = stream;
  card.dataset.clipId = event.thumbnail;
  const length = event.clip_end - event.started;
  card.querySelector(".alert-meta").textContent =
    `${ongoing ? "ongoing" : "ended"} · since ${fmtTime(event.started)}` +
    `${ongoing ? "" : ` · ${fmtDuration(length)}`} · peak ${(event.peak * 100).toFixed(0)}%`;
  const url = `/api/streams/${encodeURIComponent(stream)}/clips/${encodeURIComponent(event.thumbnail)}/thumbnail.jpg`;
  if (card.img.dataset.src !== url) thumbnails.show(card.img, url);
}

/** One event (history or live): create or update its occurrence's card. */
function addEvent(stream, entryId, event, origin) {
  let entry = occurrences.get(event.id);
  if (!entry) {
    entry = { card: alertCard(stream, event), stream, event, lastEntry: entryId, origin };
    occurrences.set(event.id, entry);
    if (occurrences.size > KEPT) {
      for (const [id, old] of occurrences) {
        if (!old.card.isConnected) {
          occurrences.delete(id);
          break;
        }
      }
    }
  } else if (compareIds(entry.lastEntry, entryId) >= 0) {
    return; // seen already (history and live overlap)
  }
  entry.event = event;
  entry.lastEntry = entryId;
  if (origin === "live") entry.origin = "live";
  paintAlert(entry);
  if (stream === state.selected) {
    const list = $("#alerts");
    if (list.firstElementChild !== entry.card) list.prepend(entry.card);
    while (list.children.length > SHOWN) list.lastElementChild.remove();
    $("#alerts-empty").hidden = true;
  }
}

async function jump(stream, card) {
  const entry = occurrences.get(card.dataset.occurrence);
  if (!entry) return;
  await state.timeline.ready;
  if (state.selected === stream) await state.timeline.jumpTo(entry.event.thumbnail, entry.event.clip_start);
}

async function loadHistory(stream) {
  $("#alerts").replaceChildren();
  $("#alerts-empty").hidden = false;
  if (!stream) return;
  let after = "0-0";
  const events = [];
  try {
    for (let page = 0; page < HISTORY_PAGES; page += 1) {
      const body = await getJSON(`/api/events${query({ stream, after, limit: HISTORY_PAGE })}`);
      events.push(...body.events);
      if (body.events.length < HISTORY_PAGE) break;
      after = body.next_after;
    }
  } catch (err) {
    showError(err, "Cannot load the alert history");
    return;
  }
  if (state.selected !== stream) return;
  for (const { id, event } of events) addEvent(stream, id, event, "history");
  // cards of this stream that arrived live before the history: keep them in order too
  const mine = [...occurrences.values()].filter((o) => o.stream === stream)
    .sort((a, b) => compareIds(b.lastEntry, a.lastEntry)).slice(0, SHOWN);
  $("#alerts").replaceChildren(...mine.map((o) => o.card));
  $("#alerts").dataset.loaded = stream; // the history is in (tests wait for it)
  $("#alerts-empty").hidden = mine.length > 0;
  // resume after the last one read ("0-0" when none: whatever comes during a disconnect is caught up)
  state.socket.seen(stream, events.length ? events.at(-1).id : "0-0");
  state.socket.resume();
}

export function installWatches() {
  $("#watch-form").addEventListener("submit", addWatch);
  on("stream-selected", (name) => {
    $("#watch-error").textContent = ""; // it was about the stream shown before
    loadWatches();
    loadHistory(name);
    scheduleRefresh();
  });
  on("live-event", ({ id, stream, event }) => {
    addEvent(stream, id, event, "live");
    if (stream === state.selected && watches.some((x) => x.id === event.watch)) {
      clearTimeout(reloadTimer); // its score and checks changed: read them (once for a burst)
      reloadTimer = setTimeout(loadWatches, 300);
    }
  });
}
