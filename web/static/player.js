// The player: the newest clip's thumbnail while live, a replay of a chosen range (GET .../replay as an
// MP4, fetched with the token and played from a blob) when one is chosen.

import { query, request, thumbnails } from "./api.js";
import { state } from "./state.js";
import { $, fmtRange, showError } from "./ui.js";

export class Player {
  constructor() {
    this.video = $("#replay-video");
    this.still = $("#live-still");
    this.empty = $("#player-empty");
    this.caption = $("#player-caption");
    this.download = $("#replay-download");
    this.backLive = $("#back-live");
    this.fps = $("#replay-fps");
    this.mode = "live"; // live | replay
    this.blobUrl = null;
    this.abort = null;
    this.last = null; // the last range replayed (the speed selector replays it again)
    this.latest = null; // {stream, clip}
    this.backLive.addEventListener("click", () => this.live());
    this.fps.addEventListener("change", () => {
      if (this.mode === "replay" && this.last) this.replay(this.last);
    });
  }

  reset() {
    this.abort?.abort();
    this.latest = null;
    this.live();
  }

  /** Show the newest clip of the stream (called as the timeline grows). */
  showLatest(stream, clip) {
    this.latest = { stream, clip };
    if (this.mode === "live") this.paintLive();
  }

  live() {
    this.abort?.abort();
    this.mode = "live";
    this.video.pause();
    this.video.hidden = true;
    this.download.hidden = true;
    this.backLive.hidden = true;
    this.dropBlob();
    this.paintLive();
  }

  paintLive() {
    const clip = this.latest?.clip;
    this.still.hidden = !clip;
    this.empty.hidden = Boolean(clip);
    if (!clip) {
      this.caption.textContent = "–";
      return;
    }
    thumbnails.show(this.still, clip.thumbnail_url);
    this.still.alt = `Newest clip of ${this.latest.stream}, ${fmtRange(clip.start, clip.end)}`;
    const live = state.streams.get(this.latest.stream)?.state === "live";
    this.caption.textContent = `${live ? "Live" : "Last remembered"} · newest clip ${fmtRange(clip.start, clip.end)}`;
  }

  dropBlob() {
    if (this.blobUrl) URL.revokeObjectURL(this.blobUrl);
    this.blobUrl = null;
    this.video.removeAttribute("src");
  }

  /** Replay `range` ({stream, start, end, shownEnd, count}): one frame per clip, `fps` clips a second. */
  async replay(range) {
    this.abort?.abort();
    const abort = new AbortController();
    this.abort = abort;
    this.last = range;
    this.mode = "replay";
    const label = `${range.stream} ${fmtRange(range.start, range.shownEnd ?? range.end)}`;
    this.caption.textContent = `Loading the replay of ${label}…`;
    this.video.setAttribute("aria-busy", "true");
    const fps = Number(this.fps.value) || 4;
    const url = `/api/streams/${encodeURIComponent(range.stream)}/replay` +
      query({ start: range.start, end: range.end, format: "mp4", fps });
    try {
      const res = await request(url, { signal: abort.signal });
      const blob = await res.blob();
      if (abort.signal.aborted) return;
      this.dropBlob();
      this.blobUrl = URL.createObjectURL(blob);
      // Chromium never shows the frame of a one-frame video that loops: loop only real sequences
      this.video.loop = (range.count ?? 2) > 1;
      this.video.src = this.blobUrl;
      this.video.dataset.start = range.start;
      this.video.dataset.end = range.end;
      this.video.hidden = false;
      this.still.hidden = true;
      this.empty.hidden = true;
      this.backLive.hidden = false;
      this.download.hidden = false;
      this.download.href = this.blobUrl;
      this.download.download = `${range.stream}-${Math.round(range.start)}-${Math.round(range.end)}.mp4`;
      const clips = range.count ? ` · ${range.count} clip${range.count === 1 ? "" : "s"}` : "";
      this.caption.textContent = `Replay · ${label}${clips}`;
      await this.video.play().catch(() => {}); // autoplay may be refused: the controls still work
    } catch (err) {
      if (err.name === "AbortError") return;
      this.caption.textContent = `No replay of ${label}: ${err.message}`;
      showError(err, "Replay failed");
    } finally {
      if (this.abort === abort) this.video.removeAttribute("aria-busy");
    }
  }
}
