/**
 * fanout-client.js: the browser client of the fanout daemon. One ES module,
 * no dependencies; the daemon serves it at /fanout-client.js to any origin.
 *
 * @example
 * import { connect } from 'https://events.example.com/fanout-client.js';
 * const client = connect({
 *   username: 'alice',                                             // optional with a token
 *   token: async () => (await fetch('/api/fanout-token')).text(), // optional
 *   onEvent: (event, raw, { id }) => console.log(id, event.type, event.run_id),
 *   onStatus: (s) => console.log(s.state, s.reconnects, s.code, s.reason),
 *   onResync: ({ reason }) => console.warn('events were lost:', reason), // optional
 *   history: 20,                                                   // optional
 * });
 * // later: client.close();
 *
 * What the client does when a connection ends, by close code:
 * - 1001 (server shutting down), 1013 (send queue full: client too slow),
 *   1006 (network lost) and any other code: reconnects with exponential
 *   backoff and jitter, from minDelay up to maxDelay. Each wait is a random
 *   50–100 % of the backoff, so the first one after a connection that was
 *   open 5 s is 250–500 ms by default: the clients of an instance that
 *   stops (1001) come back spread over 250 ms, not all at the same instant.
 * - 4001 (token expired): with a token function, asks it for a fresh token
 *   and reconnects at once; with a fixed token, stops with state 'expired'.
 * - 1008 (too many messages) and 1009 (message too big): a bug in the page,
 *   so it stops with state 'failed' rather than loop.
 *
 * A browser sees a refused handshake only as close code 1006. After one, the
 * client fetches the same URL over http(s); the daemon runs the same checks
 * and answers with the status and a one-line reason:
 * - 401: stops with state 'unauthorized' (cross-origin only when a token
 *   was given: a fetch to another origin carries no cookies, so it would
 *   not tell a missing cookie from a refused one).
 * - 403: stops with state 'forbidden' (origin, protected mode, username).
 * - 400 from the daemon's own checks (bad username): stops with 'failed'.
 * - 429, 503: waits Retry-After seconds, then reconnects.
 * - anything else, or no answer: backs off.
 * The stopping states carry the daemon's reason in status.reason.
 *
 * Missed events: the client offers the WebSocket subprotocol fanout.v1, in
 * which the daemon sends each event as {"id":"…","data":<event>} and, when
 * it cannot resume, a {"control":"resync","reason":"…"} message. The client
 * hands data to onEvent (with the id), keeps the last id and reconnects with
 * ?last_event_id=<id>: the daemon replays every retained event after it,
 * then the live ones, with no gap and no duplicate. When the id is no longer
 * retained (trimmed, expired), onResync is called, then every retained event
 * follows. Until an id is known (the first connection, or while none came),
 * the `history` option asks for the last N retained events instead; the
 * `lastEventId` option gives the first connection an id to resume after.
 *
 * Read receipts: on fanout.v1 the client acknowledges the last event id to
 * the daemon ({"ack":"<id>"}), which records per user the highest id
 * acknowledged, so a backend can ask whether the user saw an event. With
 * the `ack` option 'visible' (the default) it acknowledges once the page
 * is visible (document.visibilityState): an event that arrives while the
 * tab is hidden is acknowledged when the user comes back to it; 'receipt'
 * acknowledges on arrival, 'never' never. At most one ack a second, always
 * of the last id; onAck is told each one sent.
 *
 * A daemon without fanout.v1 (older than history): browsers fail a
 * handshake whose server picks none of the offered subprotocols. After two
 * such failures in a row that the daemon's diagnosis (below) says it would
 * have accepted, the client dials once without a subprotocol; on that
 * connection events reach onEvent as published, with an empty id, and
 * nothing missed is replayed. The next reconnect offers fanout.v1 again.
 */

/**
 * @typedef {object} FanoutStatus
 * @property {'connecting'|'open'|'reconnecting'|'closed'|'unauthorized'|'forbidden'|'expired'|'failed'} state
 *   connecting: first attempt; open: receiving events; reconnecting: waiting
 *   `delay` ms or dialling again; closed: close() was called; the others are
 *   final: the client stopped and will not reconnect.
 * @property {number} reconnects connections opened again after the first one
 * @property {number} code the last close code (1006 for a refused handshake), 0 if none
 * @property {string} reason the close reason, or the daemon's reason for refusing
 * @property {number} httpStatus the status of a refused handshake, 0 if none
 * @property {number} delay ms until the next attempt, while reconnecting
 */

/**
 * @typedef {object} FanoutEventInfo
 * @property {string} id the event id; '' when it has none (HISTORY=off, the
 *   daemon could not record it, or a daemon without fanout.v1)
 */

/**
 * @typedef {object} FanoutResync
 * @property {string} reason why the daemon could not resume, in its words
 * @property {string} lastEventId the id the client asked to resume after ('' if none)
 */

/**
 * @typedef {object} FanoutOptions
 * @property {string} [url] the /ws URL (ws:, wss:, http(s): or relative to
 *   the page); default: /ws of the daemon that served this module
 * @property {string} [username] the channel; with JWT auth it defaults to the token's user
 * @property {string|(() => string|Promise<string>)} [token] a JWT, or a function
 *   returning a fresh one, called before every connection
 * @property {(event: any, raw: string, info: FanoutEventInfo) => void} [onEvent] each event: parsed
 *   JSON (the raw text if not JSON), its text as published, and its id
 * @property {(status: FanoutStatus) => void} [onStatus] each status change
 * @property {(resync: FanoutResync) => void} [onResync] the daemon could not resume
 *   after the last id (trimmed, expired or unknown): every retained event
 *   follows, some of which the page may have shown already
 * @property {number} [history] until an event id is known, ask for the last
 *   N retained events (?history=N): a page that opens late still shows them
 * @property {string} [lastEventId] resume after this id on the first
 *   connection, e.g. one kept in sessionStorage across a reload
 * @property {'visible'|'receipt'|'never'} [ack='visible'] when to acknowledge
 *   the last event id (read receipts): once the page is visible, on arrival, or never
 * @property {(id: string) => void} [onAck] each acknowledgement sent, with its id
 * @property {number} [minDelay=500] first backoff delay, ms
 * @property {number} [maxDelay=30000] largest backoff delay, ms
 */

const STABLE_MS = 5000; // a connection open this long resets the backoff
const ACK_EVERY_MS = 1000; // at most one ack a second (the daemon writes one a second)
const SUBPROTOCOL = 'fanout.v1'; // events as {"id","data"}, controls as {"control"}
const FINAL = new Set(['closed', 'unauthorized', 'forbidden', 'expired', 'failed']);

/**
 * Connects to the daemon and keeps reconnecting until close() or a final state.
 * @param {FanoutOptions} [options]
 * @returns {FanoutClient}
 */
export function connect(options = {}) {
  return new FanoutClient(options);
}

export class FanoutClient {
  #opts;
  #ws = null;
  #timer = 0;
  #failures = 0; // attempts since the last stable connection
  #openedAt = 0;
  #everOpen = false;
  #lastEventId = ''; // the id of the last event handed to onEvent
  #historyWanted = false; // ask for ?history=N while no id is known
  // Browsers fail a handshake that offered a subprotocol the server did
  // not pick, so a daemon without fanout.v1 is only seen as failed
  // handshakes that its diagnosis says it would have accepted.
  #v1Misses = 0; // such failures in a row
  #plainNext = false; // the next attempt offers no subprotocol
  #eventFns = new Set();
  #statusFns = new Set();
  #resyncFns = new Set();
  #ackedId = ''; // the last id acknowledged to the daemon
  #ackAt = 0; // when it was sent
  #ackTimer = 0;
  #onVisibility = null;
  #status = { state: 'connecting', reconnects: 0, code: 0, reason: '', httpStatus: 0, delay: 0 };

  /** @param {FanoutOptions} options */
  constructor(options = {}) {
    this.#opts = { minDelay: 500, maxDelay: 30000, ack: 'visible', ...options };
    if (!['visible', 'receipt', 'never'].includes(this.#opts.ack)) {
      throw new TypeError(`fanout: ack must be 'visible', 'receipt' or 'never', not ${this.#opts.ack}`);
    }
    if (this.#opts.ack === 'visible' && globalThis.document) {
      this.#onVisibility = () => this.#scheduleAck();
      document.addEventListener('visibilitychange', this.#onVisibility);
    }
    /** The /ws URL, without username and token. */
    this.url = toWebSocketURL(options.url);
    this.#lastEventId = options.lastEventId ? String(options.lastEventId) : '';
    this.#historyWanted = options.history > 0;
    if (options.onEvent) this.onEvent(options.onEvent);
    if (options.onStatus) this.onStatus(options.onStatus);
    if (options.onResync) this.onResync(options.onResync);
    // After the caller's synchronous onEvent/onStatus calls.
    queueMicrotask(() => this.#open());
  }

  /** @returns {FanoutStatus} a copy of the current status */
  get status() {
    return { ...this.#status };
  }

  /** The id of the last event received ('' if none): the next connection resumes after it. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** The last event id acknowledged to the daemon ('' if none). */
  get ackedId() {
    return this.#ackedId;
  }

  /** Adds an event listener; returns a function that removes it. */
  onEvent(fn) {
    this.#eventFns.add(fn);
    return () => this.#eventFns.delete(fn);
  }

  /** Adds a status listener; returns a function that removes it. */
  onStatus(fn) {
    this.#statusFns.add(fn);
    return () => this.#statusFns.delete(fn);
  }

  /** Adds a resync listener; returns a function that removes it. */
  onResync(fn) {
    this.#resyncFns.add(fn);
    return () => this.#resyncFns.delete(fn);
  }

  /** Closes the connection for good (state 'closed'). */
  close() {
    this.#stop('closed', { code: 1000, reason: 'closed by the page' });
  }

  async #open() {
    if (FINAL.has(this.#status.state)) return;
    this.#set(this.#everOpen || this.#failures ? 'reconnecting' : 'connecting', { delay: 0 });
    let url;
    try {
      url = await this.#connectURL();
    } catch (err) {
      return this.#retry({ code: 0, reason: `token: ${err?.message ?? err}`, httpStatus: 0 });
    }
    if (FINAL.has(this.#status.state)) return;
    const offered = !this.#plainNext;
    this.#plainNext = false;
    const ws = offered ? new WebSocket(url, [SUBPROTOCOL]) : new WebSocket(url);
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.#openedAt = Date.now();
      if (ws.protocol === SUBPROTOCOL) {
        this.#v1Misses = 0;
      } else {
        // Events come without ids: the last id would replay some of them
        // again, and history would repeat what the page has shown.
        this.#lastEventId = '';
        this.#historyWanted = false;
      }
      const reconnects = this.#status.reconnects + (this.#everOpen ? 1 : 0);
      this.#everOpen = true;
      this.#set('open', { reconnects, code: 0, reason: '', httpStatus: 0 });
      this.#scheduleAck(); // one owed from before the reconnect
    };
    ws.onmessage = (msg) => {
      if (this.#ws !== ws) return;
      // Without fanout.v1 (a daemon older than history) ws.protocol is
      // empty and each message is the published bytes as they are.
      if (ws.protocol === SUBPROTOCOL) this.#receiveFrame(msg.data, url);
      else this.#deliver(parse(msg.data), msg.data, '');
    };
    ws.onclose = ({ code, reason }) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      if (opened && Date.now() - this.#openedAt >= STABLE_MS) this.#failures = 0;
      const why = { code, reason, httpStatus: 0 };
      if (code === 1008 || code === 1009) return this.#stop('failed', why);
      if (code === 4001) {
        if (typeof this.#opts.token !== 'function') return this.#stop('expired', why);
        return this.#retry(why, 0);
      }
      if (!opened) return this.#diagnose(url, why, offered);
      this.#retry(why);
    };
  }

  // #receiveFrame handles one fanout.v1 message: an event or a control.
  #receiveFrame(text, url) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.error(`fanout: a fanout.v1 message that is not JSON: ${text.slice(0, 100)}`);
      return;
    }
    if (frame?.control !== undefined) {
      if (frame.control !== 'resync') return; // a control from a newer daemon
      const asked = new URL(url).searchParams.get('last_event_id') ?? '';
      this.#emit(this.#resyncFns, { reason: String(frame.reason ?? ''), lastEventId: asked });
      return;
    }
    if (frame === null || typeof frame !== 'object' || !('data' in frame)) {
      console.error(`fanout: a fanout.v1 message without data: ${text.slice(0, 100)}`);
      return;
    }
    // No id with HISTORY=off, or when the daemon could not record the
    // event: the last id stays where it was.
    const id = typeof frame.id === 'string' ? frame.id : '';
    if (id) this.#lastEventId = id;
    this.#deliver(frame.data, publishedText(text, id), id);
    if (id) this.#scheduleAck();
  }

  // #scheduleAck acknowledges the last event id when the ack option says
  // so, at most once a second: the ack sent is always of the last id.
  #scheduleAck() {
    const { ack } = this.#opts;
    if (ack === 'never' || this.#ackTimer || !this.#lastEventId || this.#lastEventId === this.#ackedId) return;
    if (ack === 'visible' && globalThis.document && document.visibilityState !== 'visible') return;
    const wait = Math.max(0, this.#ackAt + ACK_EVERY_MS - Date.now());
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = 0;
      this.#sendAck();
    }, wait);
  }

  #sendAck() {
    const ws = this.#ws;
    const id = this.#lastEventId;
    if (!id || id === this.#ackedId || !ws || ws.readyState !== WebSocket.OPEN || ws.protocol !== SUBPROTOCOL) return;
    if (this.#opts.ack === 'visible' && globalThis.document && document.visibilityState !== 'visible') return;
    ws.send(JSON.stringify({ ack: id }));
    this.#ackedId = id;
    this.#ackAt = Date.now();
    if (this.#opts.onAck) this.#emit(new Set([this.#opts.onAck]), id);
  }

  #deliver(event, raw, id) {
    this.#emit(this.#eventFns, event, raw, { id });
  }

  #emit(fns, ...args) {
    for (const fn of fns) {
      try {
        fn(...args);
      } catch (err) {
        console.error(err);
      }
    }
  }

  async #connectURL() {
    const url = new URL(this.url);
    if (this.#opts.username) url.searchParams.set('username', this.#opts.username);
    // Resume after the last event seen; until there is one, the optional
    // late-join history.
    if (this.#lastEventId) url.searchParams.set('last_event_id', this.#lastEventId);
    else if (this.#historyWanted) url.searchParams.set('history', String(Math.floor(this.#opts.history)));
    const { token } = this.#opts;
    const value = typeof token === 'function' ? await token() : token;
    if (value) url.searchParams.set('token', value);
    return url.href;
  }

  // #diagnose asks the daemon, over plain HTTP, why the handshake failed.
  async #diagnose(url, why, offered) {
    const httpURL = url.replace(/^ws/, 'http');
    let resp, text;
    try {
      resp = await fetch(httpURL, { cache: 'no-store' });
      text = (await resp.text()).trim().slice(0, 300);
    } catch {
      return this.#retry({ ...why, reason: 'cannot connect' });
    }
    if (FINAL.has(this.#status.state)) return;
    const status = resp.status;
    const refused = { ...why, reason: text, httpStatus: status };
    const sameOrigin = new URL(httpURL).origin === globalThis.location?.origin;
    if (status === 401 && (this.#opts.token || sameOrigin)) return this.#stop('unauthorized', refused);
    if (status === 403) return this.#stop('forbidden', refused);
    if (status === 400 && !text.startsWith('websocket:')) return this.#stop('failed', refused);
    if (status === 429 || status === 503) {
      const after = Number(resp.headers.get('Retry-After'));
      if (after > 0) return this.#retry(refused, after * 1000 + Math.random() * this.#opts.minDelay);
    }
    // 400 "websocket: …" means the daemon would have accepted a handshake.
    // Twice in a row after offering fanout.v1: a daemon without it (older
    // than history), or a proxy dropping the header; one try without.
    if (status === 400 && offered && ++this.#v1Misses >= 2) {
      this.#v1Misses = 0;
      this.#plainNext = true;
    }
    this.#retry(status === 400 ? { ...why, reason: 'cannot connect' } : refused);
  }

  #retry(why, delay = this.#backoff()) {
    this.#set('reconnecting', { ...why, delay: Math.round(delay) });
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  // #backoff doubles from minDelay up to maxDelay, and waits a random
  // 50–100% of that, so that clients dropped together come back spread out.
  #backoff() {
    const { minDelay, maxDelay } = this.#opts;
    const base = Math.min(maxDelay, minDelay * 2 ** Math.min(this.#failures++, 20));
    return base / 2 + (Math.random() * base) / 2;
  }

  #stop(state, why) {
    if (FINAL.has(this.#status.state)) return;
    clearTimeout(this.#timer);
    clearTimeout(this.#ackTimer);
    if (this.#onVisibility) document.removeEventListener('visibilitychange', this.#onVisibility);
    const ws = this.#ws;
    this.#ws = null;
    ws?.close(1000);
    this.#set(state, { ...why, delay: 0 });
  }

  #set(state, patch) {
    this.#status = { ...this.#status, ...patch, state };
    const status = this.status;
    for (const fn of this.#statusFns) {
      try {
        fn({ ...status });
      } catch (err) {
        console.error(err);
      }
    }
  }
}

// parse returns text as JSON, or text itself when it is not JSON.
function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// publishedText returns the event's text as it was published: the daemon
// writes {"id":"<id>","data":<the published bytes>} ({"data":…} without an
// id), so it is cut out of the message: re-encoding the data could change
// spacing, escapes and number formats.
function publishedText(text, id) {
  const head = id ? `{"id":${JSON.stringify(id)},"data":` : '{"data":';
  if (text.startsWith(head) && text.endsWith('}')) return text.slice(head.length, -1);
  return JSON.stringify(JSON.parse(text).data);
}

// toWebSocketURL resolves url (default: this daemon's /ws) to a ws(s): URL.
function toWebSocketURL(url) {
  const u = url ? new URL(url, globalThis.location?.href) : new URL('/ws', import.meta.url);
  u.protocol = u.protocol.replace(/^http/, 'ws');
  return u.href;
}
