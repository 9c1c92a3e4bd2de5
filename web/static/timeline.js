// The timeline of a stream's memory: one thumbnail per clip (GET /api/streams/NAME/segments), newest
// on the right, following the live end. Choosing a range (click, drag, Shift+click, Shift+arrows)
// replays it and lets the ask box ask about it.

import { getJSON, query, thumbnails } from "./api.js";
import { $, el, emit, fmtDuration, fmtRange, fmtTime, showError } from "./ui.js";

const WINDOW_S = 1800; // a stream opens on its last 30 minutes; "Load earlier" adds 30 more each time
const PAGE = 1000; // clips per segments request
const MAX_CLIPS = 5000; // clips kept in the DOM; the oldest go first
const GAP_FACTOR = 2.5; // a pause longer than this many clip lengths is drawn as a gap

function segmentsUrl(stream, params) {
  return `/api/streams/${encodeURIComponent(stream)}/segments${query({ limit: PAGE, ...params })}`;
}

/** Every clip of a request, following `next_start` while the answer is truncated. */
async function fetchAll(stream, params, signal) {
  const clips = [];
  let body = await getJSON(segmentsUrl(stream, params), { signal });
  clips.push(...body.segments);
  while (body.truncated && body.next_start !== null && clips.length < MAX_CLIPS) {
    const { last, ...rest } = params; // paging on goes from next_start to the same end
    body = await getJSON(segmentsUrl(stream, { ...rest, start: body.next_start }), { signal });
    clips.push(...body.segments);
  }
  return clips;
}

export class Timeline {
  constructor() {
    this.list = $("#timeline");
    this.summary = $("#timeline-selection");
    this.stream = null;
    this.clips = [];
    this.ids = new Map(); // clip id -> index
    this.anchor = null; // selection: clips[min(anchor, focus) .. max(anchor, focus)]
    this.focus = null;
    this.active = null; // the clip the keyboard is on
    this.dragging = false;
    this.extend = false;
    this.tap = null; // a touch that may become a tap (or a scroll)
    this.follow = true; // keep the newest clip in view
    this.abort = null;
    this.refreshing = null;
    this.bind();
  }

  bind() {
    const list = this.list;
    list.addEventListener("pointerdown", (e) => this.pointerDown(e));
    list.addEventListener("pointerover", (e) => {
      if (!this.dragging) return;
      const i = this.indexOf(e.target);
      if (i !== null && i !== this.focus) this.setSelection(this.anchor, i);
    });
    document.addEventListener("pointerup", (e) => {
      if (this.tap) this.tapped(e);
      if (!this.dragging) return;
      this.dragging = false;
      this.commit();
    });
    document.addEventListener("pointercancel", () => {
      this.tap = null; // the finger scrolled the strip
    });
    list.addEventListener("keydown", (e) => this.key(e));
    list.addEventListener("focus", () => {
      if (this.active === null && this.clips.length) this.setActive(this.focus ?? this.clips.length - 1);
    });
    list.addEventListener("scroll", () => {
      this.follow = list.scrollLeft + list.clientWidth >= list.scrollWidth - 48;
    }, { passive: true });
    $("#timeline-earlier").addEventListener("click", () => this.loadEarlier());
    $("#timeline-replay").addEventListener("click", () => this.commit());
    $("#timeline-ask").addEventListener("click", () => {
      const range = this.range();
      if (range) emit("ask-about-range", range);
    });
    $("#timeline-clear").addEventListener("click", () => this.clear());
    this.extendButton = $("#timeline-extend");
    this.extendButton.addEventListener("click", () => this.setExtend(!this.extend));
  }

  /** "Select a range": a click or tap extends the selection (what Shift+click does; phones have no Shift). */
  setExtend(on) {
    this.extend = on;
    this.extendButton.setAttribute("aria-pressed", String(on));
  }

  indexOf(node) {
    const li = node.closest?.("li[data-clip-id]");
    if (!li || !this.list.contains(li)) return null;
    return this.ids.get(li.dataset.clipId) ?? null;
  }

  // -- loading -------------------------------------------------------------------------------------

  /** Show `stream`; `hasClips` false: nothing to load yet (its first clips come through refresh()). */
  async show(stream, hasClips = true) {
    this.abort?.abort();
    this.abort = new AbortController();
    this.stream = stream;
    this.clips = [];
    this.ids = new Map();
    this.anchor = this.focus = this.active = null;
    this.follow = true;
    this.render();
    this.updateSelection();
    if (!stream || !hasClips) return;
    this.list.setAttribute("aria-busy", "true");
    try {
      const clips = await fetchAll(stream, { last: WINDOW_S }, this.abort.signal);
      if (this.stream !== stream) return;
      this.clips = clips;
      this.render();
      this.scrollToEnd();
      this.announceLatest();
    } catch (err) {
      if (this.stream === stream && err.status !== 404) showError(err, `Cannot load the timeline of ${stream}`);
    } finally {
      this.list.removeAttribute("aria-busy");
    }
  }

  /** New clips since the last one shown (called when /ws status says the memory grew). */
  refresh() {
    if (!this.stream || this.refreshing) return this.refreshing;
    const stream = this.stream;
    this.refreshing = (async () => {
      try {
        const last = this.clips.at(-1);
        const fresh = last
          ? await fetchAll(stream, { start: last.start + 0.0005 }, this.abort?.signal)
          : await fetchAll(stream, { last: WINDOW_S }, this.abort?.signal);
        if (this.stream !== stream) return;
        const added = fresh.filter((c) => !this.ids.has(c.id));
        if (added.length) this.append(added);
      } catch (err) {
        if (err.status !== 404) showError(err, `Cannot update the timeline of ${stream}`);
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  async loadEarlier(before = null) {
    if (!this.stream || !this.clips.length) return 0;
    const stream = this.stream;
    const first = this.clips[0].start;
    const start = Math.max(0, (before ?? first) - WINDOW_S);
    try {
      const older = (await fetchAll(stream, { start, end: first }, this.abort?.signal))
        .filter((c) => !this.ids.has(c.id));
      if (this.stream !== stream) return 0;
      if (!older.length) {
        this.summary.textContent = "Nothing earlier in the memory.";
        $("#timeline-earlier").disabled = true;
        return 0;
      }
      const width = this.list.scrollWidth;
      this.prepend(older);
      this.list.scrollLeft += this.list.scrollWidth - width; // keep what was in view where it was
      return older.length;
    } catch (err) {
      showError(err, "Cannot load earlier clips");
      return 0;
    }
  }

  // -- rendering -----------------------------------------------------------------------------------

  reindex() {
    this.ids = new Map(this.clips.map((c, i) => [c.id, i]));
  }

  item(clip, i) {
    const prev = this.clips[i - 1];
    const length = clip.end - clip.start;
    const gap = prev ? clip.start - prev.end : 0;
    const img = el("img", { alt: "", draggable: "false", width: 96, height: 54 });
    const li = el("li", {
      role: "option",
      id: `clip-${clip.id}`,
      class: gap > length * GAP_FACTOR ? "clip gap-before" : "clip",
      dataset: { clipId: clip.id, start: clip.start, end: clip.end },
      "aria-selected": "false",
      "aria-label": `Clip at ${fmtTime(clip.start)}, ${fmtDuration(length)}`,
      title: gap > length * GAP_FACTOR ? `${fmtDuration(gap)} without clips before this one` : undefined,
    }, img, el("span", { class: "t" }, fmtTime(clip.start)));
    if (clip.thumbnail_url) thumbnails.show(img, clip.thumbnail_url);
    else img.classList.add("missing");
    return li;
  }

  render() {
    this.reindex();
    this.list.replaceChildren(...this.clips.map((c, i) => this.item(c, i)));
    $("#timeline-earlier").disabled = !this.clips.length;
    this.paintSelection();
    this.updateSelection();
  }

  append(added) {
    const start = this.clips.length;
    this.clips.push(...added);
    this.clips.sort((a, b) => a.start - b.start);
    if (this.clips.slice(start).some((c, k) => c !== added[k])) {
      this.render(); // out of order (rare): draw again
    } else {
      this.reindex();
      this.list.append(...added.map((c, k) => this.item(c, start + k)));
    }
    this.trim();
    $("#timeline-earlier").disabled = false;
    if (this.follow) this.scrollToEnd();
    if (this.anchor === null) this.updateSelection();
    this.announceLatest();
  }

  prepend(older) {
    const shift = older.length;
    this.clips = [...older, ...this.clips].sort((a, b) => a.start - b.start);
    const move = (i) => (i === null ? null : i + shift);
    this.anchor = move(this.anchor);
    this.focus = move(this.focus);
    this.active = move(this.active);
    this.render();
  }

  /** Drop clips the memory no longer holds (retention trimmed them: they start before `first`). */
  forget(first) {
    if (first === null || first === undefined || !this.clips.length || this.clips[0].start >= first) return;
    const gone = this.clips.findIndex((c) => c.start >= first);
    this.trimFirst(gone < 0 ? this.clips.length : gone);
  }

  trim() {
    const extra = this.clips.length - MAX_CLIPS;
    if (extra > 0) this.trimFirst(extra);
  }

  trimFirst(extra) {
    this.clips.splice(0, extra);
    const move = (i) => (i === null || i < extra ? null : i - extra);
    this.anchor = move(this.anchor);
    this.focus = move(this.focus);
    this.active = move(this.active);
    this.render();
  }

  scrollToEnd() {
    this.list.scrollLeft = this.list.scrollWidth;
  }

  announceLatest() {
    const last = this.clips.at(-1);
    if (last) emit("timeline-latest", { stream: this.stream, clip: last });
  }

  // -- selection -----------------------------------------------------------------------------------

  bounds() {
    if (this.anchor === null || this.focus === null) return null;
    return [Math.min(this.anchor, this.focus), Math.max(this.anchor, this.focus)];
  }

  /** The selected range as a window: clips whose start is in [start, end). */
  range() {
    const b = this.bounds();
    if (!b) return null;
    const [lo, hi] = b;
    const first = this.clips[lo];
    const last = this.clips[hi];
    const next = this.clips[hi + 1];
    const end = next ? Math.min(last.end, next.start) : last.end;
    return {
      stream: this.stream, start: first.start, end, shownEnd: last.end, count: hi - lo + 1,
      ids: this.clips.slice(lo, hi + 1).map((c) => c.id),
    };
  }

  setSelection(anchor, focus) {
    this.anchor = anchor;
    this.focus = focus;
    this.paintSelection();
    this.updateSelection();
  }

  paintSelection() {
    const b = this.bounds();
    for (const li of this.list.children) {
      const i = this.ids.get(li.dataset.clipId);
      const on = b !== null && i >= b[0] && i <= b[1];
      if ((li.getAttribute("aria-selected") === "true") !== on) li.setAttribute("aria-selected", String(on));
    }
  }

  updateSelection() {
    const range = this.range();
    for (const id of ["#timeline-replay", "#timeline-ask", "#timeline-clear"]) $(id).disabled = !range;
    if (range) {
      this.summary.textContent =
        `Selected ${fmtRange(range.start, range.shownEnd)} · ${range.count} clip${range.count === 1 ? "" : "s"}`;
    } else if (this.stream) {
      this.summary.textContent = this.clips.length
        ? "Click a clip, or drag (Shift+arrows) across several, to replay that range."
        : "No clip remembered yet.";
    } else {
      this.summary.textContent = "";
    }
  }

  /** The selection is final: replay it (and offer it to the ask box). */
  commit() {
    const range = this.range();
    if (range) emit("range-selected", range);
  }

  clear() {
    this.setSelection(null, null);
    emit("range-cleared", null);
  }

  setActive(i) {
    this.active = i;
    const li = this.list.children[i];
    if (!li) return;
    for (const other of this.list.querySelectorAll(".active")) other.classList.remove("active");
    li.classList.add("active");
    this.list.setAttribute("aria-activedescendant", li.id);
    li.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  pointerDown(e) {
    if (e.button !== 0) return;
    const i = this.indexOf(e.target);
    if (i === null) return;
    if (e.pointerType === "touch") {
      this.tap = { i, x: e.clientX, y: e.clientY }; // a finger scrolls the strip; only a tap selects
      return;
    }
    e.preventDefault();
    this.setActive(i); // before focus(): the focus handler would otherwise put it on the newest clip
    this.list.focus({ preventScroll: true });
    this.pick(i, e.shiftKey);
    this.dragging = true;
  }

  tapped(e) {
    const { i, x, y } = this.tap;
    this.tap = null;
    if (Math.hypot(e.clientX - x, e.clientY - y) > 12) return;
    this.setActive(i);
    this.pick(i, false);
    this.commit();
  }

  pick(i, shift) {
    if ((shift || this.extend) && this.anchor !== null) this.setSelection(this.anchor, i);
    else this.setSelection(i, i);
  }

  key(e) {
    if (!this.clips.length) return;
    const last = this.clips.length - 1;
    const at = this.active ?? this.focus ?? last;
    const moves = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: last, PageUp: at - 10, PageDown: at + 10 };
    if (e.key in moves) {
      e.preventDefault();
      const i = Math.max(0, Math.min(last, moves[e.key]));
      this.setActive(i);
      if (e.shiftKey) this.setSelection(this.anchor ?? at, i);
      return;
    }
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      if (!e.shiftKey && (this.bounds() === null || this.bounds()[0] === this.bounds()[1])) {
        this.setSelection(at, at);
      }
      this.commit();
    } else if (e.key === "Escape") {
      e.preventDefault();
      this.clear();
    }
  }

  /** Select and show the clip `clipId` (an evidence chip, an alert), loading earlier clips if needed. */
  async jumpTo(clipId, time) {
    if (!this.ids.has(clipId) && this.clips.length) {
      if (time >= this.clips.at(-1).start) await this.refresh();
      else {
        for (let tries = 0; tries < 20 && !this.ids.has(clipId); tries += 1) {
          if (!(await this.loadEarlier(time))) break;
        }
      }
    }
    const i = this.ids.get(clipId);
    if (i === undefined) {
      showError(new Error(`clip ${fmtTime(time)} is no longer in the memory (trimmed by retention)`));
      return false;
    }
    this.follow = false;
    this.setSelection(i, i);
    this.setActive(i);
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    this.list.children[i].scrollIntoView({ block: "nearest", inline: "center", behavior: smooth ? "smooth" : "auto" });
    this.commit();
    return true;
  }
}
