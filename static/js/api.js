// Fetch helpers for the Surge JSON API: every call resolves to {ok, status, data}
// (never throws), and errorMessage() turns a failed result into text for the user.

/** Parse a response body as JSON; anything else (HTML error page, empty body) gives null. */
async function parseBody(response) {
  let text = '';
  try {
    text = await response.text();
  } catch {
    return null;
  }
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Send one request. status 0 means the network failed (offline, server down, CORS...). */
async function request(method, url, body, headers = {}) {
  const init = {
    method,
    credentials: 'same-origin',
    headers: { Accept: 'application/json', ...headers },
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return { ok: false, status: 0, data: null };
  }
  const data = await parseBody(response);
  return { ok: response.ok, status: response.status, data };
}

/** GET a JSON resource. */
export function getJSON(url) {
  return request('GET', url);
}

/** PUT/POST/DELETE with an optional JSON body and extra headers. */
export function sendJSON(method, url, body, headers) {
  return request(method, url, body, headers);
}

/** The server's error code ("insufficient_stock", ...) or null. */
export function errorCode(result) {
  const code = result && result.data && result.data.error && result.data.error.code;
  return typeof code === 'string' ? code : null;
}

/** A human-readable message for a failed (or malformed) result. */
export function errorMessage(result) {
  const error = result && result.data && result.data.error;
  if (error && typeof error.message === 'string' && error.message.trim()) {
    return error.message;
  }
  if (error && error.code === 'insufficient_stock' && Number.isInteger(error.available)) {
    return `Not enough stock: only ${error.available} available.`;
  }
  if (!result || result.status === 0) {
    return 'Could not reach the server. Check your connection and try again.';
  }
  if (result.ok) return 'The server sent an unexpected response.';
  if (result.status >= 500) return `The server had a problem (HTTP ${result.status}). Please try again.`;
  return `The request failed (HTTP ${result.status}).`;
}

/** A random UUID v4 for the Idempotency-Key header (randomUUID needs a secure context). */
export function newIdempotencyKey() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
