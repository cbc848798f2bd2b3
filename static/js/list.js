// Product list page (/): search form, grid of product cards, "Load more" paging.
import { getJSON, errorMessage } from './api.js';
import { formatPriceRange, stockLabel, stockLevel } from './format.js';
import { el, setStatus, initial, colourSlot } from './dom.js';

const PAGE_SIZE = 24;

const form = document.getElementById('search');
const input = document.getElementById('q');
const grid = document.getElementById('products');
const status = document.getElementById('status');
const loadMore = document.getElementById('load-more');

const state = { q: '', cursor: null, request: 0, count: 0 };

function productsUrl(q, cursor) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  return `/api/products?${params}`;
}

function stockBadge(available) {
  return el('span', {
    class: `stock stock--${stockLevel(available)}`,
    'data-available': String(Number(available) || 0),
    text: stockLabel(available),
  });
}

function productCard(product) {
  const href = `/products/${encodeURIComponent(product.slug)}`;
  return el('li', { class: 'card', 'data-slug': product.slug },
    el('div', { class: `thumb thumb--${colourSlot(product.slug)}`, 'aria-hidden': 'true', text: initial(product.name) }),
    el('h2', { class: 'card__title' }, el('a', { href, class: 'card__link', text: product.name })),
    el('p', { class: 'price', text: formatPriceRange(product.price_min_minor, product.price_max_minor, product.currency) }),
    stockBadge(product.available),
  );
}

function isPage(data) {
  return data && Array.isArray(data.items);
}

function summary(count, hasMore) {
  if (count === 0) return 'No products match';
  const noun = count === 1 ? 'product' : 'products';
  return `Showing ${count} ${noun}${hasMore ? ' — more available' : ''}.`;
}

/** Fetch the first page (append = false) or the next page, ignoring stale responses. */
async function loadPage(append) {
  const request = ++state.request;
  grid.setAttribute('aria-busy', 'true');
  setStatus(status, append ? 'Loading more products…' : 'Loading products…');
  const result = await getJSON(productsUrl(state.q, append ? state.cursor : null));
  if (request !== state.request) return; // a newer search replaced this one
  grid.removeAttribute('aria-busy');

  if (!result.ok || !isPage(result.data)) {
    if (!append) {
      grid.replaceChildren();
      loadMore.hidden = true;
    }
    setStatus(status, errorMessage(result), 'error');
    return;
  }

  const cards = result.data.items.map(productCard);
  if (append) grid.append(...cards);
  else grid.replaceChildren(...cards);
  state.count = (append ? state.count : 0) + cards.length;
  state.cursor = result.data.next_cursor || null;
  loadMore.hidden = !state.cursor;
  setStatus(status, summary(state.count, Boolean(state.cursor)), state.count ? 'info' : 'empty');
  // Keyboard users continue from the first newly loaded product.
  if (append && cards.length) cards[0].querySelector('a').focus();
}

function syncUrl(q) {
  const url = new URL(location.href);
  if (q) url.searchParams.set('q', q);
  else url.searchParams.delete('q');
  history.replaceState(null, '', url);
}

function onSearch(event) {
  event.preventDefault();
  state.q = input.value.trim();
  state.cursor = null;
  syncUrl(state.q);
  loadPage(false);
}

function onLoadMore() {
  if (state.cursor) loadPage(true);
}

function init() {
  state.q = (new URLSearchParams(location.search).get('q') || '').trim();
  input.value = state.q;
  form.addEventListener('submit', onSearch);
  loadMore.addEventListener('click', onLoadMore);
  loadPage(false);
}

init();
