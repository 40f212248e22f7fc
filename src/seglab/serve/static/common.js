// What the two pages share: API calls that report the server's one-line errors, the token form, the status line.
"use strict";

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// fetch() that turns a refusal into an ApiError with the server's {"error": "..."} line.
async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch (ignored) { /* not JSON: keep the status line */ }
    throw new ApiError(message, response.status);
  }
  return response;
}

function setStatus(text, isError = false) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("error", isError);
}

// The token lives in a same-site cookie, so that fetches, <img> and links all carry it.
function askForToken(message, retry) {
  const form = $("token-box");
  form.hidden = false;
  setStatus(message, true);
  form.onsubmit = (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    document.cookie = `seglab_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
    form.hidden = true;
    setStatus("");
    retry();
  };
}
