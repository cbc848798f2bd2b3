// Tiny DOM helpers: build elements without innerHTML (data always goes in as text)
// and show messages in a page's live status region.

/**
 * el('a', {href: '/x', class: 'link', text: 'Go'}, child...) → element.
 * Props become attributes, except: class, text (textContent) and dataset.
 * null / undefined / false props and children are skipped; true → empty attribute.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Put a message in a role="status" region; kind ("info" | "success" | "error") drives styling. */
export function setStatus(region, message, kind = 'info') {
  region.textContent = message;
  region.dataset.kind = kind;
}

/** Keyboard-friendly "busy" state without `disabled` (which would drop focus). */
export function setBusy(button, busy) {
  if (busy) button.setAttribute('aria-disabled', 'true');
  else button.removeAttribute('aria-disabled');
}

export function isBusy(button) {
  return button.getAttribute('aria-disabled') === 'true';
}

/** First letter of a name, for the coloured placeholder blocks. */
export function initial(name) {
  const first = String(name || '').trim().charAt(0);
  return first ? first.toUpperCase() : '?';
}

/** Stable colour slot (0..5) for a placeholder block, derived from a string. */
export function colourSlot(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 6;
}
