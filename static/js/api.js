// Fetch helpers for the Surge JSON API: every call resolves to {ok, status, data,
// retryAfter} (never throws), errorMessage() turns a failed result into text for the
// user, and refusalMessage() says a shopper-facing refusal (sold out, queued, over the
// limit...) in plain words.

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
  const retry = Number.parseInt(response.headers.get('Retry-After') || '', 10);
  const retryAfter = Number.isInteger(retry) && retry >= 0 ? retry : null;
  return { ok: response.ok, status: response.status, data, retryAfter };
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

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function waitText(result, fallbackSecs) {
  const secs = result && Number.isInteger(result.retryAfter) ? result.retryAfter : fallbackSecs;
  return secs > 0 ? ` Please try again in ${plural(secs, 'second', 'seconds')}.` : ' Please try again shortly.';
}

function timeOfDay(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/**
 * A refusal in plain words, so a shopper never reads a raw error code. `context` is
 * 'cart' for a PUT of a cart line and 'checkout' for an order, because the campaign
 * limit's `remaining` means the line's largest quantity in the first case and the units
 * still allowed in the second. Anything not listed here falls back to errorMessage().
 */
export function refusalMessage(result, context = 'cart') {
  const error = (result && result.data && result.data.error) || {};
  switch (error.code) {
    case 'campaign_not_started':
      return Number.isFinite(error.starts_at_ms)
        ? `This sale has not started yet. It starts at ${timeOfDay(error.starts_at_ms)}.`
        : 'This sale has not started yet.';
    case 'campaign_ended':
      return 'This sale has ended, so its items can no longer be bought.';
    case 'queued': {
      const ahead = Number.isInteger(error.position) ? error.position : null;
      const where = ahead === null ? '' : ahead === 0 ? ' You are next.' : ` ${plural(ahead, 'person is', 'people are')} ahead of you.`;
      return `You are in the waiting room.${where} You can buy when your turn comes.`;
    }
    case 'queue_lapsed':
      return 'Your turn in the waiting room has passed without a purchase, so you can no longer buy in this sale.';
    case 'limit_exceeded': {
      const left = Number.isInteger(error.remaining) ? Math.max(0, error.remaining) : null;
      if (left === null) return 'That is more than this sale allows per customer.';
      if (context === 'checkout') {
        return left === 0
          ? 'You have already bought as many as this sale allows per customer, so this order cannot be placed. Remove the sale items to order the rest.'
          : `This sale allows you ${plural(left, 'more unit', 'more units')} per customer. Lower the quantity and place the order again.`;
      }
      return left === 0
        ? 'You already have as many as this sale allows per customer.'
        : `This sale allows at most ${plural(left, 'unit', 'units')} of this in your cart per customer.`;
    }
    case 'insufficient_stock':
      return Number.isInteger(error.available) && error.available > 0
        ? `Not enough stock: only ${error.available} left.`
        : 'Sold out: there are none left.';
    case 'rate_limited':
      return `Too many requests from you right now.${waitText(result, 1)}`;
    case 'busy':
      return `The shop is very busy right now.${waitText(result, 1)}`;
    case 'stock_recovering':
      return `Some units are being returned to stock after a server stopped.${waitText(result, 5)}`;
    default:
      return errorMessage(result);
  }
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
