// The bearer token: asked once (a dialog), kept in sessionStorage for this tab, asked again only when
// the server refuses it.

import { ApiError, getJSON, token } from "./api.js";
import { $ } from "./ui.js";

let asking = null;

/** Show the token dialog; resolves with what the user typed. */
export function askToken(message = "") {
  if (asking) return asking;
  const dialog = $("#token-dialog");
  const input = $("#token-input");
  const error = $("#token-error");
  error.textContent = message;
  input.value = "";
  asking = new Promise((resolve) => {
    const submit = (e) => {
      e.preventDefault();
      const value = input.value.trim();
      if (!value) {
        error.textContent = "Type the token (ask whoever runs this server).";
        input.focus();
        return;
      }
      $("#token-form").removeEventListener("submit", submit);
      dialog.close();
      asking = null;
      resolve(value);
    };
    $("#token-form").addEventListener("submit", submit);
  });
  dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it
  if (!dialog.open) dialog.showModal();
  input.focus();
  return asking;
}

/** GET /api/info, asking for the token until the server takes it. */
export async function loadInfo() {
  let message = "";
  for (;;) {
    try {
      return await getJSON("/api/info");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      if (token.get()) message = "The server refused that token. Check it and try again.";
      token.clear();
      token.set(await askToken(message));
    }
  }
}
