// Product page (/products/{slug}): loads the product, variant picker, quantity, "Add to cart".
// Stock of every variant updates live (live.js); after a reconnect the product is refetched.
import { getJSON, sendJSON, errorMessage, refusalMessage } from './api.js';
import { formatMoney, formatPriceRange, stockLabel, stockLevel, attributesText } from './format.js';
import { el, setStatus, setBusy, isBusy, initial, colourSlot } from './dom.js';
import { connectLive, subscribeStock, unsubscribeStock, latestStock, onReconnect } from './live.js';

const title = document.getElementById('product-name');
const status = document.getElementById('status');
const detail = document.getElementById('product-detail');
const thumb = document.getElementById('product-thumb');
const price = document.getElementById('price');
const description = document.getElementById('description');
const form = document.getElementById('add-form');
const select = document.getElementById('variant');
const qtyInput = document.getElementById('qty');
const addButton = document.getElementById('add');
const stockLine = document.getElementById('stock');

let product = null;
const subscribed = new Set(); // SKUs of this product we receive live stock for
let addedAt = 0; // when this page last added to the cart (its own changes need no announcement)

function slugFromPath(pathname) {
  const match = pathname.match(/^\/products\/([^/]+)\/?$/);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function productUrl(slug) {
  return `/api/products/${encodeURIComponent(slug)}`;
}

function showNotFound() {
  document.title = 'Product not found — Surge';
  title.textContent = 'Product not found';
  detail.hidden = true;
  thumb.hidden = true;
  setStatus(status, 'We could not find that product. It may have been removed.', 'error');
  status.append(' ', el('a', { href: '/', text: 'Browse all products' }));
}

function optionText(variant) {
  const available = Number(variant.available) || 0;
  const stock = available > 0 ? `${available} left` : 'Sold out';
  const name = attributesText(variant.attributes) || variant.sku;
  return `${name} — ${formatMoney(variant.price_minor, variant.currency)} — ${stock}`;
}

function variantOption(variant) {
  return el('option', {
    value: variant.sku,
    disabled: (Number(variant.available) || 0) <= 0,
    text: optionText(variant),
  });
}

function selectedVariant() {
  if (!product) return null;
  return product.variants.find((v) => v.sku === select.value) || null;
}

/** Keep the current choice if it still exists, else the first in-stock variant, else the first. */
function chooseVariant(previousSku) {
  const variants = product.variants;
  const keep = variants.find((v) => v.sku === previousSku);
  const pick = keep || variants.find((v) => v.available > 0) || variants[0];
  if (pick) select.value = pick.sku;
}

/** Update the stock line and the button for the selected variant. */
function showSelection() {
  const variant = selectedVariant();
  const available = variant ? Number(variant.available) || 0 : 0;
  stockLine.className = `stock stock--${stockLevel(available)}`;
  stockLine.dataset.sku = variant ? variant.sku : '';
  stockLine.dataset.available = String(available);
  stockLine.textContent = variant ? stockLabel(available) : 'Not available';
  addButton.disabled = available <= 0;
}

function renderProduct(data) {
  const previousSku = select.value;
  product = { ...data, variants: Array.isArray(data.variants) ? data.variants : [] };
  // A value that arrived over the live connection is at least as new as this response
  // (every later change sends another), so it wins.
  for (const variant of product.variants) {
    const live = latestStock(variant.sku);
    if (live) variant.available = live.available;
  }
  document.title = `${product.name} — Surge`;
  title.textContent = product.name;
  thumb.className = `thumb thumb--large thumb--${colourSlot(product.slug)}`;
  thumb.textContent = initial(product.name);
  price.textContent = formatPriceRange(product.price_min_minor, product.price_max_minor, product.currency);
  description.textContent = product.description || '';
  select.replaceChildren(...product.variants.map(variantOption));
  select.disabled = product.variants.length === 0;
  chooseVariant(previousSku);
  showSelection();
  detail.hidden = false;
  followStock(product.variants.map((v) => v.sku));
}

/* ---------- live stock ---------- */

/** Subscribe to this product's SKUs (and drop SKUs a refetch no longer lists). */
function followStock(skus) {
  const now = new Set(skus);
  const gone = [...subscribed].filter((sku) => !now.has(sku));
  const added = skus.filter((sku) => !subscribed.has(sku));
  if (gone.length) unsubscribeStock(gone, onStock);
  for (const sku of gone) subscribed.delete(sku);
  if (added.length) subscribeStock(added, onStock);
  for (const sku of added) subscribed.add(sku);
}

function onStock({ sku, available }) {
  if (!product) return;
  const variant = product.variants.find((v) => v.sku === sku);
  if (!variant) return;
  const before = Number(variant.available) || 0;
  if (before === available) return;
  variant.available = available;
  const option = [...select.options].find((o) => o.value === sku);
  if (option) {
    option.textContent = optionText(variant);
    option.disabled = available <= 0;
  }
  if (select.value !== sku) return;
  showSelection();
  // Tell screen-reader users about the changes that matter, not every count.
  if (Date.now() - addedAt < 5000) return;
  if (before > 0 && available <= 0) setStatus(status, 'This option just sold out.', 'error');
  else if (before <= 0 && available > 0) setStatus(status, 'This option is back in stock.', 'success');
}

async function loadProduct(slug, { quiet = false } = {}) {
  const result = await getJSON(productUrl(slug));
  if (result.status === 404) return showNotFound();
  if (!result.ok || !result.data || !result.data.slug) {
    if (!quiet) {
      title.textContent = 'Product unavailable';
      setStatus(status, errorMessage(result), 'error');
    }
    return;
  }
  renderProduct(result.data);
  if (!quiet) setStatus(status, '');
}

/** Quantity of this SKU already in the cart; 0 when the cart cannot be read. */
async function quantityInCart(sku) {
  const result = await getJSON('/api/cart');
  if (!result.ok || !result.data || !Array.isArray(result.data.lines)) return 0;
  const line = result.data.lines.find((l) => l.sku === sku);
  return line ? Number(line.quantity) || 0 : 0;
}

async function addToCart(event) {
  event.preventDefault();
  const variant = selectedVariant();
  if (!variant || variant.available <= 0 || isBusy(addButton)) return;
  const qty = Number(qtyInput.value);
  setBusy(addButton, true);
  setStatus(status, 'Adding to cart…');
  const existing = await quantityInCart(variant.sku);
  const result = await sendJSON('PUT', `/api/cart/items/${encodeURIComponent(variant.sku)}`, {
    quantity: existing + qty,
  });
  setBusy(addButton, false);
  if (!result.ok) {
    setStatus(status, refusalMessage(result, 'cart'), 'error');
    return;
  }
  addedAt = Date.now();
  setStatus(status, 'Added to cart', 'success');
  loadProduct(product.slug, { quiet: true }); // stock changed: refresh the counts
}

function init() {
  select.addEventListener('change', showSelection);
  form.addEventListener('submit', addToCart);
  const slug = slugFromPath(location.pathname);
  if (!slug) {
    showNotFound();
    return;
  }
  connectLive();
  // Messages sent while the connection was down are not replayed: refetch.
  onReconnect(() => loadProduct(slug, { quiet: true }));
  loadProduct(slug);
}

init();
