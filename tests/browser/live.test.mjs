// Real-browser test of the live storefront: a product page follows stock changed by
// another shopper over the WebSocket without reloading, then the cart shows the
// reservation countdown. Needs a running surge (SURGE_BASE_URL) with the admin API on
// (SURGE_ADMIN_TOKEN), Debian's /usr/bin/chromium and playwright-core; see run.sh.
//
//   SURGE_BASE_URL=http://127.0.0.1:18080 SURGE_ADMIN_TOKEN=... node --test tests/browser/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, CHROMIUM, requireEnv, call, describe, parseFrame, waitForEntry } from './lib.mjs';

const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
];

/** Wait until the text of `selector` matches; on timeout, say what it showed instead. */
async function waitForText(page, selector, pattern, timeout) {
  const source = pattern instanceof RegExp ? pattern.source : pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const flags = pattern instanceof RegExp ? pattern.flags : '';
  try {
    await page.waitForFunction(
      ([sel, src, fl]) => {
        const node = document.querySelector(sel);
        return Boolean(node && new RegExp(src, fl).test(node.textContent || ''));
      },
      [selector, source, flags],
      { timeout, polling: 50 },
    );
  } catch (error) {
    const shown = await page.evaluate((sel) => {
      const node = document.querySelector(sel);
      return node ? node.textContent : '(no such element)';
    }, selector).catch(() => '(page unavailable)');
    throw new Error(`${selector} did not show ${pattern} within ${timeout} ms; it shows ${JSON.stringify(shown)} (${error.message.split('\n')[0]})`);
  }
}

test('the product page follows stock over the WebSocket, then the cart counts down', { timeout: 120_000 }, async (t) => {
  const base = requireEnv('SURGE_BASE_URL', 'the storefront to test, e.g. http://127.0.0.1:18080').replace(/\/+$/, '');
  const token = requireEnv('SURGE_ADMIN_TOKEN', "the server's admin bearer token");

  // 1. A fresh product with 5 units.
  const tag = randomBytes(5).toString('hex');
  const slug = `live-test-${tag}`;
  const sku = `LIVE-${tag.toUpperCase()}`;
  const name = `Live Test ${tag}`;
  const created = await call(`${base}/api/admin/products`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
    json: {
      slug,
      name,
      description: 'A product created by tests/browser/live.test.mjs.',
      variants: [{ sku, attributes: { size: 'M' }, price_minor: 1999, currency: 'EUR', stock: 5 }],
    },
  });
  assert.equal(created.status, 201, `creating the product: ${describe(created)}`);

  await mkdir(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS });
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();

  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') t.diagnostic(`browser console: ${message.text()}`);
  });
  const sent = []; // frames the page sent on /ws
  const received = []; // frames it received
  page.on('websocket', (socket) => {
    if (!new URL(socket.url()).pathname.endsWith('/ws')) return;
    socket.on('framesent', (frame) => sent.push(parseFrame(frame.payload)));
    socket.on('framereceived', (frame) => received.push(parseFrame(frame.payload)));
  });
  let navigations = 0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) navigations += 1;
  });

  // 2. The product page shows the 5 units.
  const productUrl = `${base}/products/${slug}`;
  const opened = await page.goto(productUrl);
  assert.equal(opened.status(), 200, `GET ${productUrl}`);
  await waitForText(page, '#stock', '5 left', 10_000);
  // The page subscribed to the SKU and the server answered with its value.
  await waitForEntry(sent, (m) => m && m.op === 'subscribe' && Array.isArray(m.skus) && m.skus.includes(sku),
    10_000, `a subscribe frame for ${sku}`);
  await waitForEntry(received, (m) => m && m.type === 'stock' && m.sku === sku && m.available === 5,
    10_000, `a stock frame for ${sku} with available 5`);
  await page.evaluate((marker) => { window.__marker = marker; }, tag);
  const navigationsBefore = navigations;

  // 3. Another shopper (a session of its own, from Node) buys one unit.
  const reserved = await call(`${base}/api/cart/items/${encodeURIComponent(sku)}`, {
    method: 'PUT',
    json: { quantity: 1 },
  });
  assert.equal(reserved.status, 200, `the other shopper's PUT /api/cart/items/${sku}: ${describe(reserved)}`);
  const cookie = reserved.headers.getSetCookie()
    .map((header) => header.split(';')[0].trim())
    .find((pair) => pair.startsWith('surge_session='));
  assert.ok(cookie, `the PUT answered without a surge_session cookie (set-cookie: ${reserved.headers.get('set-cookie')})`);
  const order = await call(`${base}/api/checkout`, {
    method: 'POST',
    headers: { cookie, 'Idempotency-Key': randomUUID() },
    json: { email: 'other@example.com' },
  });
  assert.equal(order.status, 201, `the other shopper's checkout: ${describe(order)}`);

  // 4. The open page shows 4 without reloading, from a WebSocket message.
  await waitForText(page, '#stock', '4 left', 3_000);
  assert.equal(await page.evaluate(() => window.__marker), tag, 'the page reloaded (window.__marker is gone)');
  assert.equal(navigations, navigationsBefore, 'the page navigated');
  assert.equal(await page.locator('#stock').getAttribute('data-available'), '4');
  assert.ok(received.some((m) => m && m.type === 'stock' && m.sku === sku && m.available === 4),
    'the page showed 4 left without a stock frame saying so');
  assert.equal(await page.locator('#live-status').isVisible(), false, 'the "live updates paused" notice is showing while connected');
  assert.equal(await page.locator('#add').isDisabled(), false, '#add is disabled with 4 units left');

  // 5. This shopper adds one to the cart; the page follows its own change too.
  await page.locator('#add').click();
  await waitForText(page, '#status', 'Added to cart', 10_000);
  await waitForText(page, '#stock', '3 left', 3_000);
  await page.screenshot({ path: path.join(ARTIFACTS, 'product.png'), fullPage: true });

  await page.goto(`${base}/cart`);
  await waitForText(page, 'td.countdown', /Reserved for \d+:\d\d/, 10_000);
  const row = page.locator(`#cart-lines tr[data-sku="${sku}"]`);
  assert.equal(await row.count(), 1, `the cart has no line for ${sku}`);
  assert.match(await row.locator('.cart-product a').textContent(), new RegExp(name));
  await page.screenshot({ path: path.join(ARTIFACTS, 'cart.png'), fullPage: true });

  assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
});
