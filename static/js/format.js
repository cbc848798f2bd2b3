// Display formatting shared by all pages: money in minor units, stock labels,
// variant attributes and reservation countdowns.

const LOCALE = 'en';
const LOW_STOCK = 10;
const formatters = new Map();

function currencyFormatter(currency) {
  let formatter = formatters.get(currency);
  if (!formatter) {
    formatter = new Intl.NumberFormat(LOCALE, { style: 'currency', currency });
    formatters.set(currency, formatter);
  }
  return formatter;
}

/** formatMoney(1999, 'GBP') → "£19.99"; uses the currency's own number of decimals (JPY 0, KWD 3). */
export function formatMoney(minor, currency) {
  const amount = Number(minor);
  if (!Number.isFinite(amount)) return '';
  const code = String(currency || '').toUpperCase();
  try {
    const formatter = currencyFormatter(code);
    const digits = formatter.resolvedOptions().maximumFractionDigits;
    return formatter.format(amount / 10 ** digits);
  } catch {
    // Unknown currency code: show the raw amount rather than failing.
    return `${(amount / 100).toFixed(2)} ${code}`.trim();
  }
}

/** "£10.00" or "£10.00 – £25.00" when the variants differ in price. */
export function formatPriceRange(minMinor, maxMinor, currency) {
  const low = formatMoney(minMinor, currency);
  if (maxMinor == null || maxMinor === minMinor) return low;
  return `${low} – ${formatMoney(maxMinor, currency)}`;
}

/** "out" | "low" | "ok" — used for badge classes. */
export function stockLevel(available) {
  const n = Number(available) || 0;
  if (n <= 0) return 'out';
  return n <= LOW_STOCK ? 'low' : 'ok';
}

/** "Sold out", "N left" (1..10) or "In stock". */
export function stockLabel(available) {
  const level = stockLevel(available);
  if (level === 'out') return 'Sold out';
  if (level === 'low') return `${Number(available)} left`;
  return 'In stock';
}

const ATTRIBUTE_ORDER = ['size', 'colour', 'color'];

/** {"size":"M","colour":"Black"} → "M / Black" (size and colour first, then the rest). */
export function attributesText(attributes) {
  if (!attributes || typeof attributes !== 'object') return '';
  const rank = (key) => {
    const i = ATTRIBUTE_ORDER.indexOf(key.toLowerCase());
    return i === -1 ? ATTRIBUTE_ORDER.length : i;
  };
  return Object.keys(attributes)
    .sort((a, b) => rank(a) - rank(b))
    .map((key) => String(attributes[key]))
    .filter(Boolean)
    .join(' / ');
}

/** Milliseconds left → "14:32" (or "1:02:03" past an hour). */
export function formatCountdown(msLeft) {
  const total = Math.max(0, Math.ceil(msLeft / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  if (hours > 0) return `${hours}:${String(minutes).padStart(2, '0')}:${seconds}`;
  return `${minutes}:${seconds}`;
}
