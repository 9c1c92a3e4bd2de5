// "Publish my camera": WHIP from the browser (RFC 9725). getUserMedia -> RTCPeerConnection -> POST the
// complete SDP offer to /whip/NAME (with the token) -> apply the answer; DELETE the Location to stop.
// The server answers with every candidate at once (no trickle ICE), so the offer waits for gathering.

import { authHeaders, request } from "./api.js";
import { selectStream } from "./state.js";
import { $, showError, toast } from "./ui.js";

const NAME_KEY = "flashlive.publish-name";
const GATHER_MS = 3000; // host candidates come in milliseconds; a STUN server could take longer

function defaultName() {
  return `camera-${Math.random().toString(36).slice(2, 6)}`;
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS); // send what we have
  });
}

class Publisher {
  constructor() {
    this.form = $("#publish-form");
    this.name = $("#publish-name");
    this.button = $("#publish-button");
    this.status = $("#publish-state");
    this.preview = $("#camera-preview");
    this.pc = null;
    this.media = null;
    this.location = null;
    this.stream = null;
    this.busy = false;
    this.name.value = localStorage.getItem(NAME_KEY) || defaultName();
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (this.busy) return;
      if (this.pc) this.stop();
      else this.start();
    });
    // a tab closed while publishing ends its session at once instead of after the ICE timeout
    window.addEventListener("pagehide", () => {
      if (this.location) {
        fetch(this.location, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
      }
    });
  }

  say(text, level = "") {
    this.status.textContent = text;
    this.status.dataset.level = level;
  }

  setPublishing(on) {
    this.button.textContent = on ? "Stop publishing" : "Publish my camera";
    this.button.classList.toggle("danger", on);
    this.button.setAttribute("aria-pressed", String(on));
    this.name.disabled = on;
    this.preview.hidden = !on;
  }

  async start() {
    const name = this.name.value.trim();
    if (!name || !this.name.checkValidity()) {
      this.say("Give the stream a name: letters, digits, _ . - (starting with a letter or digit).", "bad");
      this.name.focus();
      return;
    }
    if (!navigator.mediaDevices?.getUserMedia || !window.RTCPeerConnection) {
      this.say("This browser cannot publish a camera (no WebRTC here, or the page is not on HTTPS).", "bad");
      return;
    }
    localStorage.setItem(NAME_KEY, name);
    this.busy = true;
    this.button.disabled = true;
    try {
      this.say("Asking for the camera…");
      this.media = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 15 } }, audio: false,
      });
      this.preview.srcObject = this.media;
      this.setPublishing(true);
      this.say("Connecting…");
      await this.connect(name);
      this.stream = name;
      this.say(`Publishing as ${name}. Clips appear on the timeline every few seconds.`, "good");
      selectStream(name);
    } catch (err) {
      this.cleanup();
      const text = err.name === "NotAllowedError" ? "camera access was refused"
        : err.name === "NotFoundError" ? "no camera found"
        : err.message;
      this.say(`Cannot publish: ${text}`, "bad");
      showError(new Error(text), "Cannot publish the camera");
    } finally {
      this.busy = false;
      this.button.disabled = false;
    }
  }

  async connect(name) {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    this.pc = pc;
    for (const track of this.media.getVideoTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [this.media] });
    }
    pc.addEventListener("connectionstatechange", () => this.connectionChanged(pc));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const res = await request(`/whip/${encodeURIComponent(name)}`, {
      method: "POST", body: pc.localDescription.sdp, headers: { "Content-Type": "application/sdp" },
    });
    const where = res.headers.get("Location");
    if (where) this.location = new URL(where, res.url).href;
    const answer = await res.text();
    if (this.pc !== pc) return; // stopped meanwhile
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  connectionChanged(pc) {
    if (this.pc !== pc) return;
    const s = pc.connectionState;
    if (s === "connected") this.say(`Publishing as ${this.stream ?? this.name.value}.`, "good");
    else if (s === "disconnected") this.say("Connection interrupted; trying to recover…", "warn");
    else if (s === "failed") {
      this.say("The connection failed. Publish again to reconnect.", "bad");
      toast("Publishing stopped: the WebRTC connection failed.", "error");
      this.stop();
    }
  }

  async stop() {
    // DELETE first: closing the connection first would end the session on the server by itself
    const where = this.location;
    this.location = null;
    for (const track of this.media?.getTracks() ?? []) track.stop();
    this.busy = true;
    this.button.disabled = true;
    this.say("Stopping…");
    if (where) {
      try {
        await request(where, { method: "DELETE" });
      } catch (err) {
        if (err.status !== 404) showError(err, "Stopping the camera");
      }
    }
    this.cleanup();
    this.busy = false;
    this.button.disabled = false;
    this.say("Stopped.");
  }

  cleanup() {
    this.pc?.close();
    this.pc = null;
    this.location = null;
    this.stream = null;
    for (const track of this.media?.getTracks() ?? []) track.stop();
    this.media = null;
    this.preview.srcObject = null;
    this.setPublishing(false);
  }
}

export function installPublish() {
  return new Publisher();
}
