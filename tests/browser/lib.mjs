// What the browser tests share: the paths, a JSON fetch, and waiting on recorded
// socket frames. Not a test file itself (run.sh runs *.test.mjs).

import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const ARTIFACTS = path.join(ROOT, 'artifacts', 'browser');

export const CHROMIUM = '/usr/bin/chromium';

/** A required environment variable, or a failure that says what to set. */
export function requireEnv(name, hint) {
  const value = process.env[name];
  if (!value || !value.trim()) {
    throw new Error(`${name} is not set: ${hint} (tests/browser/run.sh starts a server and sets it)`);
  }
  return value.trim();
}

/** fetch with a JSON body; resolves to {status, headers, body (parsed or text)}. */
export async function call(url, { method = 'GET', json, headers = {} } = {}) {
  const init = { method, headers: { accept: 'application/json', ...headers } };
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text for the failure message
  }
  return { status: response.status, headers: response.headers, body };
}

export const describe = (result) => `HTTP ${result.status}: ${JSON.stringify(result.body).slice(0, 400)}`;

export const parseFrame = (payload) => {
  try {
    return JSON.parse(typeof payload === 'string' ? payload : payload.toString());
  } catch {
    return null;
  }
};

/** Until `predicate` holds for one of `list` (which fills up as events arrive). */
export async function waitForEntry(list, predicate, timeout, what) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (list.some(predicate)) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
}
