// The question box: POST /api/ask answers as server-sent events (pieces, then the final record); the
// answer streams into its card, then evidence chips jump the timeline to the clips it drew on.

import { ApiError, query, readEvents, request } from "./api.js";
import { selectStream, state } from "./state.js";
import { $, el, fmtDuration, fmtRange, fmtTime, on, showError } from "./ui.js";

const RESUMES = 3; // a dropped event stream is resumed from its last record id this many times
let range = null; // the timeline's selected range, when "the selected range" is the scope

function windowFor(scope) {
  if (scope === "range" && range) return { start: range.start, end: range.end };
  if (scope === "all") return {};
  return { last: Number(scope) };
}

function scopeText(scope, stream) {
  if (scope === "range" && range) return `${stream} ${fmtRange(range.start, range.shownEnd)}`;
  if (scope === "all") return `everything ${stream} remembers`;
  return `${stream}, last ${fmtDuration(Number(scope))}`;
}

function numberField(id) {
  const input = $(id);
  if (input.value === "") return undefined;
  const value = Number(input.value);
  if (!Number.isInteger(value) || !input.checkValidity()) {
    throw new ApiError(0, "invalid_request", `${input.labels[0].textContent}: give a whole number from ${input.min} to ${input.max}`);
  }
  return value;
}

class AnswerCard {
  constructor(stream, question, scope) {
    this.stream = stream;
    this.job = null;
    this.lastId = null;
    this.done = false;
    this.abort = new AbortController();
    this.text = el("p", { class: "answer-text", "aria-live": "polite", "aria-busy": "true" });
    this.status = el("span", { class: "answer-status" }, "waiting for a worker…");
    this.stop = el("button", { type: "button", class: "ghost small", onclick: () => this.cancel() }, "Stop");
    this.meta = el("p", { class: "answer-meta" });
    this.chips = el("div", { class: "chips", role: "group", "aria-label": "Evidence: clips the answer drew on" });
    this.node = el("li", { class: "answer", dataset: { state: "waiting" } },
      el("p", { class: "question" }, question),
      el("p", { class: "scope" }, scopeText(scope, stream)),
      this.text,
      el("div", { class: "answer-foot" }, this.status, this.stop),
      this.meta,
      this.chips);
  }

  setState(name, text) {
    this.node.dataset.state = name;
    this.status.textContent = text;
  }

  async run(body) {
    try {
      const res = await request("/api/ask", {
        method: "POST", json: body, headers: { Accept: "text/event-stream" }, signal: this.abort.signal,
      });
      await this.consume(res);
      for (let i = 0; i < RESUMES && !this.done && this.job; i += 1) {
        // the connection dropped before the answer ended: carry on from the last record seen
        const url = `/api/ask/${encodeURIComponent(this.job)}/events${query({ after: this.lastId ?? "0-0" })}`;
        await this.consume(await request(url, { signal: this.abort.signal }));
      }
      if (!this.done) this.fail("the answer stopped arriving (connection lost)");
    } catch (err) {
      if (err.name === "AbortError") return;
      this.fail(err.message, err.code);
    }
  }

  async consume(res) {
    for await (const { event, data, id } of readEvents(res)) {
      if (id) this.lastId = id;
      const record = JSON.parse(data);
      if (event === "job") {
        this.job = record.job;
        this.node.dataset.job = record.job;
      } else if (event === "piece") this.piece(record);
      else if (event === "final") this.final(record);
      else if (event === "error") this.fail(record.message, record.code);
      if (this.done) return;
    }
  }

  piece(record) {
    if (record.reset) this.text.textContent = ""; // a worker died; another restarted the answer
    this.text.textContent += record.text;
    this.setState("streaming", "answering…");
  }

  final(record) {
    this.done = true;
    this.text.textContent = record.answer;
    this.text.setAttribute("aria-busy", "false");
    this.stop.remove();
    this.node.dataset.usedStart = record.used_start;
    this.node.dataset.usedEnd = record.used_end;
    const t = record.timings;
    const cut = record.finish_reason === "length" ? " (cut at the length limit)" : "";
    this.setState("done", `answered in ${fmtDuration(t.total)}${cut}`);
    this.meta.textContent =
      `${record.clips.length} clips from ${fmtRange(record.used_start, record.used_end)} · first words after ` +
      `${fmtDuration(t.first_token)} · ${t.tokens_per_s.toFixed(0)} tokens/s · ${record.model}`;
    const evidence = [...record.evidence].sort((a, b) => a.start - b.start);
    for (const ev of evidence) {
      this.chips.append(el("button", {
        type: "button", class: "chip", dataset: { clipId: ev.clip_id, start: ev.start, end: ev.end },
        title: `Replay ${fmtRange(ev.start, ev.end)} (attention ${(ev.score * 100).toFixed(0)}%)`,
        "aria-label": `Evidence at ${fmtTime(ev.start)}: show it on the timeline and replay it`,
        onclick: () => jumpToEvidence(record.stream, ev),
      }, `▶ ${fmtTime(ev.start)}`, el("span", { class: "score" }, `${(ev.score * 100).toFixed(0)}%`)));
    }
  }

  fail(message, code = "error") {
    this.done = true;
    this.text.setAttribute("aria-busy", "false");
    this.stop.remove();
    this.setState("error", "");
    this.node.dataset.code = code;
    this.node.querySelector(".answer-error")?.remove();
    this.status.after(el("span", { class: "answer-error", role: "alert" }, message));
  }

  async cancel() {
    this.abort.abort(); // leaving the event stream cancels the job
    this.done = true;
    this.text.setAttribute("aria-busy", "false");
    this.stop.remove();
    this.setState("cancelled", "stopped");
    if (this.job) {
      try {
        await request(`/api/ask/${encodeURIComponent(this.job)}`, { method: "DELETE" });
      } catch (err) {
        if (err.status !== 404) showError(err, "Cannot stop the answer");
      }
    }
  }
}

async function jumpToEvidence(stream, ev) {
  if (state.selected !== stream) {
    selectStream(stream);
    await state.timeline.ready;
  }
  await state.timeline.jumpTo(ev.clip_id, ev.start);
}

function setRange(next) {
  range = next;
  const scope = $("#ask-scope");
  const option = scope.querySelector('option[value="range"]');
  option.disabled = !next;
  option.textContent = next ? `the selected range (${fmtRange(next.start, next.shownEnd)})` : "the selected range";
  if (!next && scope.value === "range") scope.value = "600";
}

async function ask(event) {
  event.preventDefault();
  const stream = state.selected;
  const questionBox = $("#ask-question");
  const question = questionBox.value.trim();
  if (!stream) {
    showError(new Error("choose a stream first (or publish your camera)"));
    return;
  }
  if (!question) {
    showError(new Error("type a question first"));
    questionBox.focus();
    return;
  }
  const limit = state.info?.limits?.max_question_chars;
  if (limit && question.length > limit) {
    showError(new Error(`the question is ${question.length} characters; the limit is ${limit}`));
    return;
  }
  const scope = $("#ask-scope").value;
  let body;
  try {
    body = {
      stream, question, window: windowFor(scope),
      max_new_tokens: numberField("#ask-max-tokens"), budget: numberField("#ask-budget"),
    };
  } catch (err) {
    showError(err);
    return;
  }
  if ($("#ask-dropout").checked) body.dropout = {};
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  const card = new AnswerCard(stream, question, scope);
  const list = $("#answers");
  list.prepend(card.node);
  while (list.children.length > 30) list.lastElementChild.remove();
  questionBox.value = "";
  await card.run(body);
}

export function installAsk() {
  const form = $("#ask-form");
  form.addEventListener("submit", ask);
  $("#ask-question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  on("range-selected", (r) => setRange(r));
  on("range-cleared", () => setRange(null));
  on("ask-about-range", (r) => {
    setRange(r);
    $("#ask-scope").value = "range";
    $("#ask-question").focus();
  });
  on("stream-selected", (name) => {
    setRange(null);
    $("#ask-label").textContent = name ? `Question about ${name}` : "Question";
  });
}
