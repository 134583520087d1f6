/**
 * fanout-client.js: the browser client of the fanout daemon. One ES module,
 * no dependencies; the daemon serves it at /fanout-client.js to any origin.
 *
 * @example
 * import { connect } from 'https://events.example.com/fanout-client.js';
 * const client = connect({
 *   username: 'alice',                                             // optional with a token
 *   token: async () => (await fetch('/api/fanout-token')).text(), // optional
 *   onEvent: (event) => console.log(event.type, event.run_id),
 *   onStatus: (s) => console.log(s.state, s.reconnects, s.code, s.reason),
 * });
 * // later: client.close();
 *
 * What the client does when a connection ends, by close code:
 * - 1001 (server shutting down), 1013 (send queue full: client too slow),
 *   1006 (network lost) and any other code: reconnects with exponential
 *   backoff and jitter, from minDelay up to maxDelay.
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
 * Missed events: the daemon keeps no history (Redis pub/sub), so events
 * published while the client is reconnecting are not delivered. There is no
 * last_event_id to resume from yet; this client sends none.
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
 * @typedef {object} FanoutOptions
 * @property {string} [url] the /ws URL (ws:, wss:, http(s): or relative to
 *   the page); default: /ws of the daemon that served this module
 * @property {string} [username] the channel; with JWT auth it defaults to the token's user
 * @property {string|(() => string|Promise<string>)} [token] a JWT, or a function
 *   returning a fresh one, called before every connection
 * @property {(event: any, raw: string) => void} [onEvent] each event: parsed JSON (the raw text if not JSON)
 * @property {(status: FanoutStatus) => void} [onStatus] each status change
 * @property {number} [minDelay=500] first backoff delay, ms
 * @property {number} [maxDelay=30000] largest backoff delay, ms
 */

const STABLE_MS = 5000; // a connection open this long resets the backoff
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
  #eventFns = new Set();
  #statusFns = new Set();
  #status = { state: 'connecting', reconnects: 0, code: 0, reason: '', httpStatus: 0, delay: 0 };

  /** @param {FanoutOptions} options */
  constructor(options = {}) {
    this.#opts = { minDelay: 500, maxDelay: 30000, ...options };
    /** The /ws URL, without username and token. */
    this.url = toWebSocketURL(options.url);
    if (options.onEvent) this.onEvent(options.onEvent);
    if (options.onStatus) this.onStatus(options.onStatus);
    // After the caller's synchronous onEvent/onStatus calls.
    queueMicrotask(() => this.#open());
  }

  /** @returns {FanoutStatus} a copy of the current status */
  get status() {
    return { ...this.#status };
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
    const ws = new WebSocket(url);
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.#openedAt = Date.now();
      const reconnects = this.#status.reconnects + (this.#everOpen ? 1 : 0);
      this.#everOpen = true;
      this.#set('open', { reconnects, code: 0, reason: '', httpStatus: 0 });
    };
    ws.onmessage = (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch {
        event = msg.data;
      }
      for (const fn of this.#eventFns) {
        try {
          fn(event, msg.data);
        } catch (err) {
          console.error(err);
        }
      }
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
      if (!opened) return this.#diagnose(url, why);
      this.#retry(why);
    };
  }

  async #connectURL() {
    const url = new URL(this.url);
    if (this.#opts.username) url.searchParams.set('username', this.#opts.username);
    const { token } = this.#opts;
    const value = typeof token === 'function' ? await token() : token;
    if (value) url.searchParams.set('token', value);
    return url.href;
  }

  // #diagnose asks the daemon, over plain HTTP, why the handshake failed.
  async #diagnose(url, why) {
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

// toWebSocketURL resolves url (default: this daemon's /ws) to a ws(s): URL.
function toWebSocketURL(url) {
  const u = url ? new URL(url, globalThis.location?.href) : new URL('/ws', import.meta.url);
  u.protocol = u.protocol.replace(/^http/, 'ws');
  return u.href;
}
