// The live console: connects with fanout-client.js and lists the events of
// one user, each with its event id. It opens with the user's retained
// history (the last MAX_EVENTS), and the client resumes after the last id
// when it reconnects (a daemon restart loses nothing); until an event has
// come, it asks for the history again, which then holds only events the
// page has not listed. Event content only ever reaches the page as
// textContent.
import { connect } from '/fanout-client.js';

const MAX_EVENTS = 1000;
const $ = (id) => document.getElementById(id);
const form = $('connect');
const usernameInput = $('username');
const tokenInput = $('token');
const connectButton = $('connect-button');
const badge = $('status');
const badgeReason = $('status-reason');
const filterInput = $('filter');
const pauseButton = $('pause');
const rows = $('rows');
const empty = $('empty');
const count = $('count');
const seenNote = $('seen');
const json = $('json');
const detailMeta = $('detail-meta');
const resyncNote = $('resync');

let client = null;
let events = []; // { seq, id, at, event, raw, row }
let pending = []; // received while paused
let paused = false;
let selected = null;
let seq = 0;

const BADGE_TEXT = {
  idle: 'not connected',
  connecting: 'connecting…',
  open: 'connected',
  reconnecting: 'reconnecting…',
  closed: 'disconnected',
  unauthorized: 'unauthorized',
  forbidden: 'forbidden',
  expired: 'token expired',
  failed: 'stopped',
};

function showStatus(s) {
  let text = BADGE_TEXT[s.state] ?? s.state;
  if (s.state === 'reconnecting' && s.delay > 0) text = `reconnecting in ${(s.delay / 1000).toFixed(1)} s`;
  if (s.reconnects > 0) text += ` · ${s.reconnects} reconnect${s.reconnects === 1 ? '' : 's'}`;
  badge.textContent = text;
  badge.dataset.state = s.state;
  badge.dataset.reconnects = String(s.reconnects ?? 0);
  const why = [s.httpStatus ? `HTTP ${s.httpStatus}` : s.code ? `code ${s.code}` : '', s.reason].filter(Boolean).join(': ');
  badgeReason.textContent = s.state === 'open' ? '' : why;
  const live = s.state === 'connecting' || s.state === 'open' || s.state === 'reconnecting';
  connectButton.textContent = live ? 'Disconnect' : 'Connect';
  if (!live) empty.textContent = 'Not connected.';
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  if (client && !['closed', 'unauthorized', 'forbidden', 'expired', 'failed'].includes(client.status.state)) {
    client.close();
    client = null;
    return;
  }
  start();
});

function start() {
  const username = usernameInput.value.trim();
  const token = tokenInput.value.trim();
  if (!username && !token) {
    badgeReason.textContent = 'enter a username (or a token)';
    usernameInput.focus();
    return;
  }
  client?.close();
  const url = new URL(location.href);
  if (username) url.searchParams.set('username', username);
  else url.searchParams.delete('username');
  history.replaceState(null, '', url);
  empty.textContent = `Waiting for events on workflow:events:${username || '(the token’s user)'}…`;
  resyncNote.hidden = true;
  // The console watches: it acknowledges nothing on the user's behalf,
  // and shows what the user's own pages acknowledged (read receipts).
  client = connect({ username, token: token || undefined, history: MAX_EVENTS, ack: 'never', onEvent: receive, onStatus: showStatus, onResync: resynced });
  pollSeen(client, username, token);
}

// pollSeen shows, every 2 s while c is the console's client, the last event
// id the user acknowledged (GET /ack: the identity rules of /events).
async function pollSeen(c, username, token) {
  const url = new URL('ack', c.url.replace(/^ws/, 'http'));
  if (username) url.searchParams.set('username', username);
  if (token) url.searchParams.set('token', token);
  while (client === c) {
    try {
      const resp = await fetch(url, { cache: 'no-store' });
      if (resp.ok) {
        const { seen } = await resp.json();
        seenNote.textContent = seen ? `seen up to ${seen}` : 'nothing seen yet';
        seenNote.dataset.seen = seen ?? '';
      } else {
        seenNote.textContent = '';
      }
    } catch {
      seenNote.textContent = '';
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// resynced: the daemon could not resume after the last id (history trimmed
// or expired); every retained event follows, some of them already listed.
function resynced({ reason }) {
  resyncNote.textContent = `resync at ${clock(new Date())}: ${reason || 'cannot resume'}; the retained history follows`;
  resyncNote.title = resyncNote.textContent;
  resyncNote.hidden = false;
}

function receive(event, raw, info) {
  const item = { seq: ++seq, id: info?.id ?? '', at: new Date(), event, raw, row: null };
  if (paused) {
    pending.push(item);
    updateCounts();
    return;
  }
  add(item);
  updateCounts();
}

function add(item) {
  events.push(item);
  if (events.length > MAX_EVENTS) {
    const gone = events.shift();
    gone.row?.remove();
    if (selected === gone) select(null);
  }
  if (matches(item)) rows.prepend(rowFor(item));
}

const field = (event, name) => (event && typeof event === 'object' && event[name] != null ? String(event[name]) : '');

function matches(item) {
  const q = filterInput.value.trim().toLowerCase();
  if (!q) return true;
  return field(item.event, 'type').toLowerCase().includes(q) || field(item.event, 'run_id').toLowerCase().includes(q);
}

function rowFor(item) {
  if (item.row) return item.row;
  const tr = document.createElement('tr');
  tr.tabIndex = 0;
  tr.dataset.seq = String(item.seq);
  tr.dataset.id = item.id;
  // The other fields as key=value, in the order the engine sent them.
  const rest = item.event && typeof item.event === 'object' && !Array.isArray(item.event)
    ? Object.entries(item.event)
      .filter(([k]) => k !== 'type' && k !== 'run_id')
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join('  ')
    : item.raw;
  for (const [cls, text] of [['time', clock(item.at)], ['id', item.id], ['type', field(item.event, 'type')], ['run', field(item.event, 'run_id')], ['summary', rest]]) {
    const td = document.createElement('td');
    td.className = cls;
    td.textContent = text;
    if (cls === 'id' || cls === 'run' || cls === 'summary') td.title = text;
    tr.append(td);
  }
  tr.addEventListener('click', () => select(item));
  tr.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      select(item);
    }
  });
  item.row = tr;
  return tr;
}

function select(item) {
  selected?.row?.classList.remove('selected');
  selected = item;
  if (!item) {
    json.textContent = 'Click an event to see its JSON.';
    json.className = 'placeholder';
    detailMeta.textContent = '';
    return;
  }
  item.row?.classList.add('selected');
  json.className = '';
  json.textContent = typeof item.event === 'string' ? item.raw : JSON.stringify(item.event, null, 2);
  detailMeta.textContent = `${item.id ? `id ${item.id} · ` : ''}#${item.seq} · received ${clock(item.at)} · ${new TextEncoder().encode(item.raw).length} bytes`;
}

function render() {
  const shown = events.filter(matches).reverse().map(rowFor);
  rows.replaceChildren(...shown);
  updateCounts();
}

function updateCounts() {
  const shown = rows.childElementCount;
  let text = `${events.length} event${events.length === 1 ? '' : 's'}`;
  if (shown !== events.length) text = `${shown} of ${text} shown`;
  count.textContent = text;
  empty.hidden = events.length > 0;
  pauseButton.textContent = paused ? `Resume${pending.length ? ` (${pending.length} new)` : ''}` : 'Pause';
}

function clock(d) {
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

filterInput.addEventListener('input', render);
pauseButton.addEventListener('click', () => {
  paused = !paused;
  pauseButton.classList.toggle('active', paused);
  if (!paused) {
    const flush = pending;
    pending = [];
    flush.forEach(add);
  }
  updateCounts();
});
$('clear').addEventListener('click', () => {
  events = [];
  pending = [];
  resyncNote.hidden = true;
  select(null);
  render();
});

const params = new URLSearchParams(location.search);
if (params.get('username')) {
  usernameInput.value = params.get('username');
  start();
}
