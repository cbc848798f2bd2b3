// Real-browser tests of the campaign page (/campaigns/{id}): the countdown runs on the
// server's clock, buying opens at the start without a reload, the waiting room shows
// the live position and the turn, a purchase lands in the cart at the sale price, the
// page follows the sell-out, and the cart says the per-customer limit in plain words.
// Needs a running surge (SURGE_BASE_URL) with the admin API on (SURGE_ADMIN_TOKEN),
// Debian's /usr/bin/chromium and playwright-core; see run.sh.
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
const START_IN_MS = 8_000; // far enough ahead to see the countdown and join first
const SLACK_MS = 5_000; // how late after its due time a change may show
const FROM_MESSAGE_MS = 1_500; // how late after its socket message a change may show

/** The surge_session cookie a response set, for a shopper played from Node. */
function sessionCookie(result) {
  const cookie = result.headers.getSetCookie()
    .map((header) => header.split(';')[0].trim())
    .find((pair) => pair.startsWith('surge_session='));
  assert.ok(cookie, `no surge_session cookie in the answer (${describe(result)})`);
  return cookie;
}

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

/** Wait until `selector` is an enabled (or, with enabled=false, disabled) button. */
async function waitForEnabled(page, selector, enabled, timeout, why) {
  try {
    await page.waitForFunction(
      ([sel, on]) => {
        const node = document.querySelector(sel);
        return Boolean(node && node.disabled === !on);
      },
      [selector, enabled],
      { timeout, polling: 50 },
    );
  } catch {
    const hint = await page.locator('#buy-hint').textContent().catch(() => '');
    throw new Error(`${selector} was not ${enabled ? 'enabled' : 'disabled'} within ${timeout} ms (${why}); the page says ${JSON.stringify(hint)}`);
  }
}

function settings() {
  return {
    base: requireEnv('SURGE_BASE_URL', 'the storefront to test, e.g. http://127.0.0.1:18080').replace(/\/+$/, ''),
    token: requireEnv('SURGE_ADMIN_TOKEN', "the server's admin bearer token"),
  };
}

/** A fresh product with one SKU of `stock` units at 25.00 EUR. */
async function createProduct({ base, token }, stock) {
  const tag = randomBytes(5).toString('hex');
  const product = {
    slug: `sale-test-${tag}`,
    sku: `SALE-${tag.toUpperCase()}`,
    name: `Sale Test ${tag}`,
  };
  const created = await call(`${base}/api/admin/products`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
    json: {
      slug: product.slug,
      name: product.name,
      description: 'A product created by tests/browser/campaign.test.mjs.',
      variants: [{ sku: product.sku, attributes: { size: 'M' }, price_minor: 2500, currency: 'EUR', stock }],
    },
  });
  assert.equal(created.status, 201, `creating the product: ${describe(created)}`);
  return product;
}

/** A campaign on `product` starting START_IN_MS from now at 15.00 EUR. */
async function createCampaign({ base, token }, product, extra) {
  const startsAt = Date.now() + START_IN_MS;
  const created = await call(`${base}/api/admin/campaigns`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
    json: {
      name: `Flash ${product.name}`,
      product_slug: product.slug,
      starts_at_ms: startsAt,
      ends_at_ms: startsAt + 10 * 60_000,
      sale_price_minor: { [product.sku]: 1500 },
      per_customer_limit: 1,
      ...extra,
    },
  });
  assert.equal(created.status, 201, `creating the campaign: ${describe(created)}`);
  return created.body;
}

/** A browser page, already past its first load of the storefront, that records its
 * socket frames, errors and navigations. */
async function openBrowser(t, base, { clockSkewMs = 0 } = {}) {
  await mkdir(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS });
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  if (clockSkewMs) {
    await context.addInitScript((skew) => {
      const real = Date.now.bind(Date);
      Date.now = () => real() + skew;
    }, clockSkewMs);
  }
  const page = await context.newPage();
  const seen = { errors: [], received: [], navigations: 0 };
  page.on('pageerror', (error) => seen.errors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') t.diagnostic(`browser console: ${message.text()}`);
  });
  page.on('websocket', (socket) => {
    if (!new URL(socket.url()).pathname.endsWith('/ws')) return;
    socket.on('framereceived', (frame) => seen.received.push(parseFrame(frame.payload)));
  });
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) seen.navigations += 1;
  });
  const home = await page.goto(`${base}/`);
  assert.equal(home.status(), 200, 'GET /');
  return { page, seen };
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `campaign-${name}.png`), fullPage: true });

test('the campaign page counts down, queues, admits, sells at the sale price and follows the sell-out', { timeout: 120_000 }, async (t) => {
  const env = settings();
  const { base } = env;
  // The browser starts (slowly, when cold) before the campaign's clock does.
  const { page, seen } = await openBrowser(t, base);
  const product = await createProduct(env, 3);
  const campaign = await createCampaign(env, product, { queue: { admit_per_second: 1 } });

  // Two other shoppers join the waiting room first, so the page's shopper is third.
  const others = [];
  for (let i = 0; i < 2; i += 1) {
    const joined = await call(`${base}/api/campaigns/${campaign.id}/queue`, { method: 'POST' });
    assert.equal(joined.status, 200, `shopper ${i} joining the queue: ${describe(joined)}`);
    assert.equal(joined.body.position, i, `shopper ${i}'s position`);
    others.push(sessionCookie(joined));
  }

  const opened = await page.goto(`${base}/campaigns/${campaign.id}`);
  assert.equal(opened.status(), 200, 'GET /campaigns/{id}');

  // Before the start: the countdown, both prices, the limit, and no way to buy.
  await waitForText(page, '#campaign-state', /Not started yet/, 10_000);
  await waitForText(page, '#countdown', /^Starts in 0:0[1-8]$/, 5_000);
  const row = page.locator(`#skus tr[data-sku="${product.sku}"]`);
  const buy = `#skus tr[data-sku="${product.sku}"] button[data-role="buy"]`;
  assert.match(await row.locator('del').textContent(), /25\.00/, 'the regular price is struck through');
  assert.match(await row.locator('ins').textContent(), /15\.00/, 'the sale price is shown');
  await waitForText(page, '#campaign-limit', /1 unit per customer/, 2_000);
  await waitForText(page, `#skus tr[data-sku="${product.sku}"] .stock`, '3 left', 5_000);
  assert.equal(await page.locator(buy).isDisabled(), true, 'the buy button is on before the start');
  await page.evaluate((marker) => { window.__marker = marker; }, product.sku);
  const navigationsBefore = seen.navigations;
  await shot(page, 'countdown');

  // Joining before the start keeps third place.
  await page.locator('#join-queue').click();
  await waitForText(page, '#queue-position', /2 people ahead of you/, 5_000);
  assert.equal(await page.locator('#queue-position').getAttribute('data-position'), '2');
  assert.equal(await page.locator(buy).isDisabled(), true, 'the buy button is on while queued');
  await shot(page, 'queued');

  // The start: the page says so without a reload; the queue moves by socket messages.
  await waitForText(page, '#campaign-state', 'The sale is live.', START_IN_MS + SLACK_MS);
  await waitForEntry(seen.received, (m) => m && m.type === 'campaign' && m.campaign && m.campaign.id === campaign.id,
    SLACK_MS, 'the campaign message at the start');
  await waitForEntry(seen.received, (m) => m && m.type === 'queue' && m.campaign_id === campaign.id && m.position === 1 && !m.admitted,
    SLACK_MS, 'a queue message with position 1');
  // The page takes its place from the message, well before it would ask by itself
  // (it asks after 5 s of silence).
  await waitForText(page, '#queue-position', /1 person ahead of you|next in the queue|your turn/, FROM_MESSAGE_MS);

  // Admitted at about start + 2 s (third at one a second): the turn and its time left.
  await waitForEntry(seen.received, (m) => m && m.type === 'queue' && m.campaign_id === campaign.id && m.admitted,
    2_000 + SLACK_MS, 'the queue message admitting the page');
  await waitForText(page, '#queue-position', /It is your turn/, FROM_MESSAGE_MS);
  await waitForText(page, '#queue-time', /^[12]:\d\d left to buy$/, SLACK_MS);
  await waitForEnabled(page, buy, true, SLACK_MS, 'admitted, in stock, within the window');
  assert.equal(await page.evaluate(() => window.__marker), product.sku, 'the page reloaded (window.__marker is gone)');
  assert.equal(seen.navigations, navigationsBefore, 'the page navigated');
  await shot(page, 'admitted');

  // Keyboard: Tab reaches the buy button and Enter buys.
  await page.locator('#main').focus();
  let reached = false;
  for (let i = 0; i < 25 && !reached; i += 1) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate((sel) => document.activeElement === document.querySelector(sel), buy);
  }
  assert.ok(reached, 'Tab never reached the buy button');
  await page.keyboard.press('Enter');
  await waitForText(page, '#status', /Added 1 × .* to your cart at €15\.00 each/, 10_000);
  assert.equal(await page.locator('#go-to-cart').getAttribute('href'), '/cart');
  const cart = await page.evaluate(async () => (await fetch('/api/cart', { headers: { accept: 'application/json' } })).json());
  const line = cart.lines.find((l) => l.sku === product.sku);
  assert.ok(line, `the cart has no line for ${product.sku}: ${JSON.stringify(cart)}`);
  assert.equal(line.quantity, 1);
  assert.equal(line.unit_price_minor, 1500, 'the line is not at the sale price');
  await waitForText(page, `#skus tr[data-sku="${product.sku}"] .stock`, '2 left', SLACK_MS);
  await shot(page, 'bought');

  // The two other shoppers (admitted before the page) take the last two units.
  for (const [i, cookie] of others.entries()) {
    const put = await call(`${base}/api/cart/items/${encodeURIComponent(product.sku)}`, {
      method: 'PUT', headers: { cookie }, json: { quantity: 1 },
    });
    assert.equal(put.status, 200, `shopper ${i} buying: ${describe(put)}`);
  }
  await waitForText(page, `#skus tr[data-sku="${product.sku}"] .stock`, 'Sold out', SLACK_MS);
  await waitForText(page, '#campaign-state', /Sold out/, SLACK_MS);
  await waitForEnabled(page, buy, false, SLACK_MS, 'sold out');
  await shot(page, 'sold-out');

  assert.deepEqual(seen.errors, [], 'uncaught errors in the page');
});

test('without a queue the buy button turns on at the start by the server\'s clock, and the cart states the per-customer limit', { timeout: 90_000 }, async (t) => {
  const env = settings();
  const { base } = env;
  // This browser's clock is three minutes slow: the page must count down by the
  // server's (a countdown by its own clock would say "Starts in 3:0x").
  const { page, seen } = await openBrowser(t, base, { clockSkewMs: -180_000 });
  const product = await createProduct(env, 5);
  const campaign = await createCampaign(env, product, {});
  const email = `limit-${randomBytes(4).toString('hex')}@example.com`;

  await page.goto(`${base}/campaigns/${campaign.id}`);
  await waitForText(page, '#campaign-state', /Not started yet/, 10_000);
  await waitForText(page, '#countdown', /^Starts in 0:0[1-8]$/, 5_000);
  assert.equal(await page.locator('#queue').isVisible(), false, 'a waiting room is shown for a campaign without one');
  const buy = `#skus tr[data-sku="${product.sku}"] button[data-role="buy"]`;
  assert.equal(await page.locator(buy).isDisabled(), true, 'the buy button is on before the start');
  await page.evaluate(() => { window.__marker = 'still here'; });

  await waitForEnabled(page, buy, true, START_IN_MS + SLACK_MS, 'the campaign started');
  await waitForText(page, '#campaign-state', 'The sale is live.', SLACK_MS);
  assert.equal(await page.evaluate(() => window.__marker), 'still here', 'the page reloaded');

  // The same customer (by email) already ordered their one unit from another session.
  const other = await call(`${base}/api/cart/items/${encodeURIComponent(product.sku)}`, {
    method: 'PUT', json: { quantity: 1 },
  });
  assert.equal(other.status, 200, `the other session's PUT: ${describe(other)}`);
  const order = await call(`${base}/api/checkout`, {
    method: 'POST',
    headers: { cookie: sessionCookie(other), 'Idempotency-Key': randomUUID() },
    json: { email },
  });
  assert.equal(order.status, 201, `the other session's checkout: ${describe(order)}`);

  await page.locator(buy).click();
  await waitForText(page, '#status', /Added 1 × .* to your cart at €15\.00 each/, 10_000);
  await page.locator('#go-to-cart').click();
  await waitForText(page, 'td.countdown', /Reserved for \d+:\d\d/, 10_000);

  // Over the line's limit: refused in plain words, the quantity is put back.
  const qty = page.locator(`#cart-lines tr[data-sku="${product.sku}"] input[data-role="qty"]`);
  await qty.fill('2');
  await qty.press('Enter');
  await qty.blur();
  await waitForText(page, '#status', 'This sale allows at most 1 unit of this in your cart per customer.', 5_000);
  assert.equal(await qty.inputValue(), '1');

  // Checkout by the customer who already has their unit: refused with what remains.
  await page.locator('#email').fill(email.toUpperCase());
  await page.locator('#place-order').click();
  await waitForText(page, '#status', /already bought as many as this sale allows per customer/, 10_000);
  assert.equal(await page.locator('#confirmation').isVisible(), false, 'an order was confirmed over the limit');
  await shot(page, 'limit');

  assert.deepEqual(seen.errors, [], 'uncaught errors in the page');
});
