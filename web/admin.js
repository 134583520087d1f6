// The operator page: polls /admin/stats every second and shows it. It holds
// no data itself; with ADMIN_TOKEN it asks for the token on the first 401,
// keeps it in sessionStorage and sends it as a bearer token.
const TOKEN_KEY = 'fanout-admin-token';
const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);
const text = (id, value) => {
  $(id).textContent = value;
};

let timer = 0;

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  let resp;
  try {
    resp = await fetch('/admin/stats', { cache: 'no-store', headers: token ? { Authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    return failed(`cannot reach the daemon (${err.message})`);
  }
  if (resp.status === 401) {
    // Wait for a token; polling resumes when one is entered.
    return askToken(token ? 'That token was refused.' : '');
  }
  if (!resp.ok) return failed(`/admin/stats: HTTP ${resp.status} ${(await resp.text()).trim()}`);
  try {
    render(await resp.json());
  } catch (err) {
    return failed(`bad answer from /admin/stats (${err.message})`);
  }
  $('error').hidden = true;
  timer = setTimeout(refresh, 1000);
}

function failed(message) {
  text('error', `${message}; retrying every second, showing the last stats received.`);
  $('error').hidden = false;
  $('ready').dataset.state = 'down';
  text('ready', 'unreachable');
  timer = setTimeout(refresh, 1000);
}

function askToken(error) {
  $('ready').dataset.state = 'unknown';
  text('ready', 'token needed');
  $('token-form').hidden = false;
  $('dashboard').classList.add('locked');
  text('token-error', error);
  $('token-error').hidden = !error;
  $('admin-token').focus();
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('admin-token').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('admin-token').value = '';
  $('token-form').hidden = true;
  $('dashboard').classList.remove('locked');
  refresh();
});

const num = (n) => Number(n ?? 0).toLocaleString('en-US');
const rate = (n) => {
  const v = Number(n ?? 0);
  return v >= 100 ? num(Math.round(v)) : v.toFixed(1);
};

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = Number(n ?? 0);
  let i = 0;
  for (; v >= 1024 && i < units.length - 1; i++) v /= 1024;
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

function duration(seconds) {
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  const pad = (x) => String(x).padStart(2, '0');
  if (d) return `${d}d ${h}h ${pad(m)}m`;
  if (h) return `${h}h ${pad(m)}m ${pad(s)}s`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

// rows fills a tbody with rows of cells; a cell is text, or [text, className].
function rows(id, data, emptyText) {
  const tbody = $(id);
  const trs = data.map((cells) => {
    const tr = document.createElement('tr');
    for (const cell of cells) {
      const td = document.createElement('td');
      const [value, cls] = Array.isArray(cell) ? cell : [cell, ''];
      td.textContent = value;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  });
  if (!trs.length && emptyText) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 3;
    td.className = 'none';
    td.textContent = emptyText;
    tr.append(td);
    trs.push(tr);
  }
  tbody.replaceChildren(...trs);
}

function render(s) {
  text('instance', s.instance);
  text('version', s.version);
  text('uptime', duration(s.uptime_seconds));
  text('auth-mode', s.auth_mode);
  $('ready').dataset.state = s.ready ? 'ready' : 'not-ready';
  text('ready', s.ready ? 'ready' : `not ready: ${s.not_ready || 'unknown'}`);
  text('updated', `updated ${new Date().toLocaleTimeString('en-GB')}`);

  const rates = s.rates_per_second ?? {};
  const counters = s.counters ?? {};
  text('connections', num(s.connections));
  text('users', `${num(s.users)} user${s.users === 1 ? '' : 's'}`);
  text('frames-rate', `${rate(rates.frames_delivered)}/s`);
  text('frames-total', `${num(counters.frames_delivered)} total`);
  text('messages-rate', `${rate(rates.messages_received)}/s`);
  text('messages-total', `${num(counters.messages_received)} total`);
  const q = s.send_queues ?? {};
  text('queued-frames', `${num(q.queued_frames)} frames`);
  text('queued-bytes', `${bytes(q.queued_bytes)} queued · limit ${num(q.limit_frames_per_connection)} frames / ${bytes(q.limit_bytes_per_connection)} per connection`);
  const r = s.redis ?? {};
  const redisState = $('redis-state');
  redisState.textContent = r.ready ? 'subscribed' : r.subscribed ? 'not ready' : 'down';
  redisState.className = `big ${r.ready ? 'good' : 'bad'}`;
  text('redis-addr', r.addr ?? '');

  drawChart($('chart'), s.throughput ?? []);

  rows('top-users', (s.top_users ?? []).map((u) => [u.username, [num(u.connections), 'num']]), 'no connections');
  rows('redis', [
    ['address', r.addr ?? ''],
    ['subscribed', r.subscribed ? 'yes' : 'no'],
    ['ready', r.ready ? 'yes' : `no: ${r.not_ready || ''}`],
    ['last received', r.last_received_seconds_ago < 0 ? 'never' : `${r.last_received_seconds_ago.toFixed(1)} s ago`],
    ['failures', [num(r.failures), r.failures ? 'warn' : '']],
    ['probes missed', [num(r.probes_missed), r.probes_missed ? 'warn' : '']],
  ]);
  const rejected = Object.entries(s.rejected ?? {}).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  rows('rejected', rejected.map(([why, n]) => [why, [num(n), 'num warn']]), 'none');
  text('window', `last minute = last ${Math.round(s.window_seconds ?? 0)} s`);
  const last = s.last_minute ?? {};
  rows('counters', Object.keys(counters).sort().map((name) => [name, [num(counters[name]), 'num'], [num(last[name]), 'num']]));
}

// drawChart draws frames delivered and messages received per second over
// the last minute as an SVG line chart sized to its container.
function drawChart(box, series) {
  const W = Math.max(box.clientWidth, 300);
  const H = 200;
  const pad = { l: 56, r: 24, t: 12, b: 24 };
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', W);
  svg.setAttribute('height', H);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const add = (tag, attrs, content) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (content != null) el.textContent = content;
    svg.append(el);
    return el;
  };
  const end = series.length ? series[series.length - 1].t : Date.now() / 1000;
  const start = end - 60;
  const peak = Math.max(0, ...series.map((p) => Math.max(p.frames_delivered, p.messages_received)));
  const top = 4 * niceStep(peak / 4);
  const x = (t) => pad.l + ((t - start) / 60) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / top) * (H - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    add('line', { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: i ? 'grid' : 'axis' });
    add('text', { x: pad.l - 8, y: y(v) + 4, class: 'label', 'text-anchor': 'end' }, num(v));
  }
  for (const [t, label] of [[start, '−60 s'], [start + 30, '−30 s'], [end, 'now']]) {
    add('text', { x: x(t), y: H - 6, class: 'label', 'text-anchor': t === start ? 'start' : t === end ? 'end' : 'middle' }, label);
  }
  for (const [key, cls] of [['messages_received', 'messages'], ['frames_delivered', 'frames']]) {
    if (!series.length) break;
    const points = series.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
    const first = x(series[0].t).toFixed(1);
    const last = x(series[series.length - 1].t).toFixed(1);
    add('polygon', { points: `${first},${y(0)} ${points.join(' ')} ${last},${y(0)}`, class: `area ${cls}` });
    add('polyline', { points: points.join(' '), class: `line ${cls}` });
  }
  if (!series.length) add('text', { x: W / 2, y: H / 2, class: 'label', 'text-anchor': 'middle' }, 'collecting…');
  box.replaceChildren(svg);
}

// niceStep rounds up to a whole 1, 2, 3, 4, 5, 6 or 8 times a power of
// ten, so that the axis has round, whole labels.
function niceStep(v) {
  const p = 10 ** Math.max(0, Math.floor(Math.log10(Math.max(v, 1))));
  return [1, 2, 3, 4, 5, 6, 8, 10].map((m) => m * p).find((n) => n >= v);
}

refresh();
