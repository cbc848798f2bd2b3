// The merchant's campaign monitor (/admin/campaigns/{id}/monitor): asks for the admin
// token, keeps it in sessionStorage (this tab only, never the URL), reads the report
// once over HTTP and then follows the campaign's `campaign_report` messages on the
// socket (see docs/PROTOCOL.md, Campaign reports).

import { sendJSON } from './api.js';
import { el, setStatus } from './dom.js';
import { formatMoney } from './format.js';
import { connectLive, monitorCampaign, onLive, onReconnect } from './live.js';

const TOKEN_KEY = 'surge.adminToken';
const CHART_POINTS = 60; // one per report: about a minute
const CHART_W = 300;
const CHART_H = 80;

const $ = (id) => document.getElementById(id);
const campaignId = decodeURIComponent(location.pathname.split('/')[3] || '');

const state = {
  token: null,
  stopMonitor: null,
  last: null, // the previous report: {orders, at}
  rates: [], // orders per second between successive reports
};

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives in memory for this page only
  }
}

const count = (n) => (Number.isFinite(n) ? n.toLocaleString('en') : '–');
const ms = (n) => (Number.isFinite(n) ? `${(n / 1000).toFixed(1)} s` : '–');
const time = (t) => (Number.isFinite(t) ? new Date(t).toLocaleTimeString('en') : '–');

function setText(id, text) {
  const node = $(id);
  if (node && node.textContent !== text) node.textContent = text;
}

const SVG = 'http://www.w3.org/2000/svg';

/** One bar per report interval, newest on the right, scaled to the window's peak. */
function drawChart() {
  const rates = state.rates;
  const max = Math.max(1, ...rates);
  const slot = CHART_W / CHART_POINTS;
  const offset = CHART_POINTS - rates.length;
  const bars = rates.map((r, i) => {
    const h = Math.max(r > 0 ? 2 : 0, (r / max) * (CHART_H - 4));
    const bar = document.createElementNS(SVG, 'rect');
    bar.setAttribute('x', ((offset + i) * slot + 0.5).toFixed(1));
    bar.setAttribute('y', (CHART_H - 1 - h).toFixed(1));
    bar.setAttribute('width', Math.max(1, slot - 1).toFixed(1));
    bar.setAttribute('height', h.toFixed(1));
    return bar;
  });
  $('rate-bars').replaceChildren(...bars);
  const latest = rates.length ? rates[rates.length - 1] : 0;
  const peak = rates.length ? Math.max(...rates) : 0;
  setText(
    'rate-summary',
    rates.length
      ? `Now ${latest.toFixed(1)} orders per second; peak ${peak.toFixed(1)} over the last ${rates.length} reports.`
      : 'No orders yet.',
  );
}

function recordRate(report) {
  const now = { orders: report.orders, at: report.server_time_ms };
  const prev = state.last;
  state.last = now;
  if (!prev || now.at <= prev.at) return;
  const rate = Math.max(0, (now.orders - prev.orders) / ((now.at - prev.at) / 1000));
  state.rates.push(rate);
  if (state.rates.length > CHART_POINTS) state.rates.shift();
  drawChart();
}

function renderRefusals(refusals) {
  const entries = Object.entries(refusals || {}).filter(([, n]) => Number.isFinite(n));
  entries.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const body = $('refusals');
  body.replaceChildren(
    ...entries.map(([code, n]) =>
      el('tr', { dataset: { code } }, el('td', {}, el('code', { text: code })), el('td', { class: 'num', text: count(n) })),
    ),
  );
  $('no-refusals').hidden = entries.length > 0;
}

function render(report) {
  if (!report || report.campaign_id !== campaignId) return;
  $('monitor').hidden = false;
  setText('campaign-name', report.name);
  setText('campaign-state', report.state);
  setText('campaign-window', `${new Date(report.starts_at_ms).toLocaleString('en')} – ${new Date(report.ends_at_ms).toLocaleString('en')}`);
  setText('updated', `updated ${time(report.server_time_ms)}`);
  setText('units-sold', count(report.units_sold));
  setText('units-left', count(report.units_left));
  setText('orders', count(report.orders));
  setText('revenue', report.currency ? formatMoney(report.revenue_minor, report.currency) : count(report.revenue_minor));
  setText('sockets', count(report.sockets));
  setText('sold-out', report.sold_out_at_ms == null ? '–' : time(report.sold_out_at_ms));
  const queue = report.queue;
  $('queue-section').hidden = !queue;
  setText('queue-waiting', queue ? count(queue.waiting) : '–');
  if (queue) {
    setText('queue-joined', count(queue.joined));
    setText('queue-admitted', count(queue.admitted));
    setText('queue-abandoned', count(queue.abandoned));
    setText('queue-p50', ms(queue.wait_p50_ms));
    setText('queue-p99', ms(queue.wait_p99_ms));
  }
  renderRefusals(report.refusals);
  recordRate(report);
}

async function fetchReport(token) {
  const result = await sendJSON('GET', `/api/admin/campaigns/${encodeURIComponent(campaignId)}/report`, undefined, {
    Authorization: `Bearer ${token}`,
  });
  return result;
}

function stop(message, kind = 'error') {
  if (state.stopMonitor) state.stopMonitor();
  state.stopMonitor = null;
  state.token = null;
  storeToken(null);
  $('token-form').hidden = false;
  setStatus($('status'), message, kind);
}

async function start(token) {
  const status = $('status');
  setStatus(status, 'Checking the token…');
  const result = await fetchReport(token);
  if (result.status === 401 || result.status === 403) return stop('That is not the admin token.');
  if (result.status === 404) return stop('No such campaign (or the admin API is off).');
  if (!result.ok) {
    setStatus(status, 'Could not load the report; retrying over the live connection.', 'error');
  } else {
    setStatus(status, 'Monitoring: the numbers update about once a second.', 'success');
    render(result.data);
  }
  state.token = token;
  storeToken(token);
  $('token-form').hidden = true;
  connectLive();
  state.stopMonitor = monitorCampaign(campaignId, token);
}

function init() {
  onLive('campaign_report', (message) => render(message.report));
  onLive('error', (message) => {
    if (message.code === 'unauthorized') stop('The server refused the token.');
    else if (message.code === 'not_found') stop('No such campaign.');
  });
  onReconnect(async () => {
    if (!state.token) return;
    const result = await fetchReport(state.token);
    if (result.ok) render(result.data);
  });
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('admin-token');
    const token = input.value.trim();
    input.value = '';
    if (token) start(token);
  });
  $('forget').addEventListener('click', () => {
    stop('Token forgotten. Enter it again to resume.', 'info');
    $('monitor').hidden = true;
    $('admin-token').focus();
  });
  const saved = readToken();
  if (saved) start(saved);
}

init();
