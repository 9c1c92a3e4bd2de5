// What the page knows, shared by its modules. Changes are announced on the bus (ui.js).

import { emit } from "./ui.js";

const SELECTED_KEY = "flashlive.stream";

export const state = {
  info: null, // GET /api/info
  streams: new Map(), // name -> Stream row (GET /api/streams, /ws status)
  selected: null, // the stream shown in the player, the timeline, the ask box and the watches
  socket: null, // LiveSocket
  timeline: null, // Timeline
  player: null, // Player
};

export function selectStream(name) {
  if (state.selected === name) return;
  state.selected = name;
  if (name) localStorage.setItem(SELECTED_KEY, name);
  emit("stream-selected", name);
}

export function rememberedStream() {
  return localStorage.getItem(SELECTED_KEY);
}

export function selectedRow() {
  return state.selected ? state.streams.get(state.selected) ?? null : null;
}
