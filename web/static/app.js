// The page: wires the modules together (each owns one part of the screen; they talk over the bus).

import { token } from "./api.js";
import { installAsk } from "./ask.js";
import { askToken, loadInfo } from "./auth.js";
import { Player } from "./player.js";
import { installPublish } from "./publish.js";
import { LiveSocket } from "./socket.js";
import { state } from "./state.js";
import { installStatus } from "./status.js";
import { installStreams, loadStreams } from "./streams.js";
import { Timeline } from "./timeline.js";
import { $, emit, on, showError, toast } from "./ui.js";
import { installWatches } from "./watches.js";

function wire() {
  state.player = new Player();
  state.timeline = new Timeline();
  state.timeline.ready = Promise.resolve();
  state.socket = new LiveSocket();
  installStatus();
  installStreams();
  installAsk();
  installWatches();
  state.publisher = installPublish();

  on("stream-selected", (name) => {
    state.player.reset();
    // a stream without clips yet (a camera just published, a registered stream not started) has no
    // segments to ask for: its first clips come through refresh() when a status says they exist
    state.timeline.ready = state.timeline.show(name, (state.streams.get(name)?.clips ?? 0) > 0);
  });
  on("timeline-latest", ({ stream, clip }) => {
    if (stream === state.selected) state.player.showLatest(stream, clip);
  });
  on("range-selected", (range) => state.player.replay(range));
  on("streams-changed", ({ before, after }) => {
    const name = state.selected;
    const was = name && before.get(name);
    const now = name && after.get(name);
    if (now?.clips && (!was || was.clips !== now.clips || was.last_end !== now.last_end)) {
      state.timeline.forget(now.first_start);
      state.timeline.refresh();
    }
  });
  on("socket-error", (payload) => toast(`Live updates: ${payload.message}`));
  on("unauthorized", async () => {
    if (!document.body.dataset.ready) return; // start-up asks for the token itself (loadInfo)
    token.clear();
    token.set(await askToken("The server refused the token (it may have changed). Type the current one."));
    window.location.reload();
  });
  $("#token-change").addEventListener("click", async () => {
    token.set(await askToken());
    window.location.reload();
  });
}

async function boot() {
  wire();
  const info = await loadInfo();
  state.info = info;
  emit("info", info);
  $("#token-change").hidden = !info.auth;
  if (!info.whip) {
    $("#publish-button").disabled = true;
    $("#publish-state").textContent = "This server does not accept WHIP publishers.";
  }
  await loadStreams();
  state.socket.start();
  document.body.dataset.ready = "true";
}

boot().catch((err) => showError(err, "FlashLive could not start"));
