// The API, the browser's storage and client message ids: everything the page keeps or asks for
// outside itself. Every call is same-origin; identity is the signed cookie set on the first visit.

const STORAGE_KEY = "arzani.session_id";

export const enc = encodeURIComponent;

export const storage = {
  // localStorage can be missing or throw (disabled storage, private modes): the page still works
  get() {
    try { return window.localStorage.getItem(STORAGE_KEY); } catch { return null; }
  },
  set(value) {
    try {
      if (value) window.localStorage.setItem(STORAGE_KEY, value);
      else window.localStorage.removeItem(STORAGE_KEY);
    } catch { /* not kept across reloads, nothing worse */ }
  },
};

// One id per user action. crypto.randomUUID exists only in secure contexts (https, localhost):
// over plain http on a LAN address the same v4 UUID is built from getRandomValues.
export function newClientMessageId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Resolves to the JSON body; rejects with an Error carrying the API's {"error": {code, message}}
// (and retryAfterMs when the server said Retry-After).
export async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    const error = new Error("The server cannot be reached; check the connection and try again.");
    error.status = 0;
    error.code = "network_error";
    throw error;
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.error;
    const error = new Error((detail && detail.message) || `The server answered ${response.status}.`);
    error.status = response.status;
    error.code = (detail && detail.code) || null;
    const retryAfter = Number(response.headers.get("Retry-After"));
    if (retryAfter > 0) error.retryAfterMs = retryAfter * 1000;
    throw error;
  }
  return data;
}
