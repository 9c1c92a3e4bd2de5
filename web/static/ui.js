// Small DOM helpers shared by the page's modules: element building, formatting, toasts, an event bus.

/** The page's event bus: modules talk through named events, never by reaching into each other. */
export const bus = new EventTarget();

export function emit(name, detail) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

export function on(name, handler) {
  bus.addEventListener(name, (e) => handler(e.detail));
}

export function $(selector, root = document) {
  const found = root.querySelector(selector);
  if (!found) throw new Error(`missing element ${selector}`);
  return found;
}

/** el("li", {class: "x", dataset: {id: 1}, onclick: fn, "aria-label": "y"}, child, "text") */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// -- formatting ----------------------------------------------------------------------------------

const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** Stream time: unix seconds for live sources (a clock time), media seconds for files (m:ss). */
export function fmtTime(t) {
  if (t === null || t === undefined || !Number.isFinite(t)) return "–";
  if (t > 1e9) {
    const d = new Date(t * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today ? clock.format(d) : `${day.format(d)} ${clock.format(d)}`;
  }
  const whole = Math.floor(t);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function fmtRange(start, end) {
  return `${fmtTime(start)}–${fmtTime(end)}`;
}

export function fmtDuration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const join = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
  if (seconds < 3600) return join(Math.floor(seconds / 60), "min", Math.round(seconds % 60), "s");
  return join(Math.floor(seconds / 3600), "h", Math.round((seconds % 3600) / 60), "min");
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

/** Redis entry ids ("<ms>-<seq>") in order. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}

// -- toasts: every failure the user should know about ------------------------------------------

const TOAST_MS = { error: 12000, info: 5000 };

export function toast(message, kind = "error") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const close = el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const item = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("span", { class: "toast-text" }, message), close);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  let timer = setTimeout(remove, TOAST_MS[kind] ?? TOAST_MS.error);
  item.addEventListener("mouseenter", () => clearTimeout(timer));
  item.addEventListener("mouseleave", () => { timer = setTimeout(remove, TOAST_MS.info); });
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
}

/** Report an error the user caused or must know about (ApiError or anything thrown). */
export function showError(err, context = "") {
  if (err?.name === "AbortError") return;
  const text = err?.message || String(err);
  toast(context ? `${context}: ${text}` : text, "error");
}
