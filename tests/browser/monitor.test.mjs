// Real-browser test of the merchant's campaign monitor: the page takes the admin token
// in a password field (kept in sessionStorage, never the URL), then follows the
// campaign's reports over the WebSocket: an order and a refusal made over HTTP by other
// shoppers change its numbers without a reload. Needs a running surge (SURGE_BASE_URL)
// with the admin API on (SURGE_ADMIN_TOKEN), /usr/bin/chromium and playwright-core;
// see run.sh.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, CHROMIUM, requireEnv, call, describe } from './lib.mjs';

const LAUNCH_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-sync'];

/** A shopper from Node with a session cookie of its own. */
function shopper(base) {
  let cookie = null;
  return async (url, options = {}) => {
    const headers = { ...(options.headers || {}), ...(cookie ? { cookie } : {}) };
    const result = await call(`${base}${url}`, { ...options, headers });
    const set = result.headers.getSetCookie().map((h) => h.split(';')[0].trim()).find((p) => p.startsWith('surge_session='));
    if (set) cookie = set;
    return result;
  };
}

/** Wait until the text of `selector` matches; on timeout, say what it showed instead. */
async function waitForText(page, selector, pattern, timeout) {
  const source = pattern instanceof RegExp ? pattern.source : `^${pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
  const flags = pattern instanceof RegExp ? pattern.flags : '';
  try {
    await page.waitForFunction(
      ([sel, src, fl]) => {
        const node = document.querySelector(sel);
        return Boolean(node && new RegExp(src, fl).test((node.textContent || '').trim()));
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

test('the monitor page follows a campaign over the socket after the token is entered', { timeout: 120_000 }, async (t) => {
  const base = requireEnv('SURGE_BASE_URL', 'the server to test').replace(/\/+$/, '');
  const token = requireEnv('SURGE_ADMIN_TOKEN', "the server's admin bearer token");
  const admin = { authorization: `Bearer ${token}` };

  // 1. A product with 3 units in a live campaign, one unit per customer.
  const tag = randomBytes(5).toString('hex');
  const sku = `MON-${tag.toUpperCase()}`;
  const product = await call(`${base}/api/admin/products`, {
    method: 'POST',
    headers: admin,
    json: { slug: `monitor-${tag}`, name: `Monitor ${tag}`, variants: [{ sku, price_minor: 2500, currency: 'EUR', stock: 3 }] },
  });
  assert.equal(product.status, 201, `creating the product: ${describe(product)}`);
  const now = Date.now();
  const created = await call(`${base}/api/admin/campaigns`, {
    method: 'POST',
    headers: admin,
    json: {
      name: `Monitor sale ${tag}`,
      skus: [sku],
      starts_at_ms: now - 1000,
      ends_at_ms: now + 600_000,
      sale_price_minor: { [sku]: 1500 },
      per_customer_limit: 1,
    },
  });
  assert.equal(created.status, 201, `creating the campaign: ${describe(created)}`);
  const id = created.body.id;

  await mkdir(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const frames = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))));
  let navigations = 0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) navigations += 1;
  });

  // 2. The page asks for the token; a wrong one is refused and forgotten.
  const monitorUrl = `${base}/admin/campaigns/${id}/monitor`;
  const opened = await page.goto(monitorUrl);
  assert.equal(opened.status(), 200, 'the monitor page is served');
  assert.equal(await page.locator('#admin-token').getAttribute('type'), 'password');
  await page.getByLabel('Admin token').fill('not-the-token');
  await page.getByRole('button', { name: 'Start monitoring' }).click();
  await waitForText(page, '#status', /not the admin token/, 10_000);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a wrong token is not kept');
  await page.screenshot({ path: path.join(ARTIFACTS, 'monitor-token.png'), fullPage: true });

  // 3. The right token: the first numbers arrive.
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Start monitoring' }).click();
  await waitForText(page, '#units-left', '3', 10_000);
  await waitForText(page, '#units-sold', '0', 1_000);
  assert.ok(!page.url().includes(token), 'the token is not in the URL');
  assert.ok(frames.some((f) => f.includes('"op":"monitor"')), 'the monitor op went over the socket');
  await page.evaluate((marker) => { window.__marker = marker; }, tag);
  const navigationsBefore = navigations;

  // 4. One shopper buys a unit; another asks for two and is refused (the limit is one).
  const buyer = shopper(base);
  const put = await buyer(`/api/cart/items/${sku}`, { method: 'PUT', json: { quantity: 1 } });
  assert.equal(put.status, 200, `the buyer's PUT: ${describe(put)}`);
  const order = await buyer('/api/checkout', {
    method: 'POST',
    headers: { 'Idempotency-Key': randomUUID() },
    json: { email: `buyer-${tag}@example.com` },
  });
  assert.equal(order.status, 201, `the buyer's checkout: ${describe(order)}`);
  const greedy = shopper(base);
  const refused = await greedy(`/api/cart/items/${sku}`, { method: 'PUT', json: { quantity: 2 } });
  assert.equal(refused.status, 409, `the greedy PUT: ${describe(refused)}`);
  assert.equal(refused.body.error.code, 'limit_exceeded');

  // 5. The open page shows them without reloading, from the socket's reports.
  await waitForText(page, '#units-sold', '1', 10_000);
  await waitForText(page, '#units-left', '2', 5_000);
  await waitForText(page, '#orders', '1', 5_000);
  await waitForText(page, '#revenue', /15\.00/, 5_000);
  await waitForText(page, '#refusals tr[data-code="limit_exceeded"] td.num', '1', 10_000);
  await waitForText(page, '#rate-summary', /orders per second/, 5_000);
  await page.waitForFunction(() => [...document.querySelectorAll('#rate-bars rect')].some((r) => Number(r.getAttribute('height')) > 0), null, { timeout: 5_000 });
  assert.ok(Number(await page.locator('#sockets').textContent()) >= 1, 'the page counts its own socket');
  assert.equal(await page.evaluate(() => window.__marker), tag, 'the page reloaded (window.__marker is gone)');
  assert.equal(navigations, navigationsBefore, 'the page navigated');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('surge.adminToken')), token, 'the token is kept for the tab');
  await page.screenshot({ path: path.join(ARTIFACTS, 'monitor-live.png'), fullPage: true });
});
