// The status strip (connection, sample rate, lag, memory, queue, workers) and the untrained-weights
// banner. Fed by /ws status messages every 2 s and by /api/info at start.

import { selectedRow, state } from "./state.js";
import { $, fmtBytes, fmtDuration, on } from "./ui.js";

function stat(name, text, level = "") {
  const node = $(`[data-stat="${name}"]`);
  node.textContent = text;
  node.dataset.level = level;
}

export function showBanner(randomWeights, workers = []) {
  const banner = $("#random-banner");
  banner.hidden = !randomWeights;
  const models = [...new Set(workers.filter((w) => w.random_weights).map((w) => w.model))];
  if (randomWeights && models.length) {
    $("#random-banner-text").textContent =
      `The query workers run untrained (random) weights (${models.join(", ")}): answers and alerts ` +
      "are noise. Point model.name in the config at a trained checkpoint.";
  }
}

let lastQueue = null;
let lastWorkers = null;

function renderStream() {
  const row = selectedRow();
  if (!row) {
    for (const name of ["fps", "lag", "memory"]) stat(name, "–");
    return;
  }
  stat("fps", row.state === "live" ? `${row.fps.toFixed(row.fps < 1 ? 2 : 1)} fps` : "–");
  const lag = row.lag_s;
  stat("lag", row.state === "live" ? fmtDuration(lag) : "–", lag > 10 ? "bad" : lag > 3 ? "warn" : "");
  stat("memory", row.clips ? `${row.clips} clips · ${fmtDuration(row.span_s)} · ${fmtBytes(row.bytes)}` : "empty");
}

function renderQueue() {
  if (lastQueue) {
    const { waiting, running } = lastQueue;
    stat("queue", `${waiting} waiting · ${running} running`, waiting > 10 ? "warn" : "");
  }
  if (lastWorkers !== null) stat("workers", String(lastWorkers), lastWorkers ? "" : "bad");
}

export function installStatus() {
  on("connection", (s) => stat("connection", s, s === "live" ? "good" : "warn"));
  on("status", (payload) => {
    lastQueue = payload.queue;
    lastWorkers = payload.workers;
    showBanner(payload.random_weights, state.info?.workers ?? []);
    renderQueue();
    renderStream();
  });
  on("streams-changed", renderStream);
  on("stream-selected", renderStream);
  on("info", (info) => {
    lastQueue = info.queue;
    lastWorkers = info.workers.length;
    showBanner(info.random_weights, info.workers);
    renderQueue();
  });
}
