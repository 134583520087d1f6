// A harness for fanout-client.js in headless Chromium, driven by the Go
// tests (console_test.go) over stdin and stdout.
//
//   node client.mjs PAGE_URL CLIENT_URL
//
// It opens PAGE_URL (a blank page, usually on another origin than the
// daemon), imports CLIENT_URL, prints "ready", then runs one JSON command
// per stdin line:
//   {"cmd":"connect","name":"a","options":{…},"tokenURL":"…"}
//       connect(options); with tokenURL, options.token is a function
//       fetching a fresh token from it. Every WebSocket the client opens is
//       tagged ?client=NAME.
//   {"cmd":"flood","name":"a","count":30}   sends count messages on a's socket
//   {"cmd":"sockets","name":"a"}            prints "sockets a N": how many
//                                           WebSockets a has opened
//   {"cmd":"urls","name":"a"}               prints "url a URL protocol=P" for
//                                           each of them, oldest first
//   {"cmd":"close","name":"a"}              a.close()
//   {"cmd":"eventsource","name":"s","url":"…"}
//       a plain EventSource on url, with no code of its own for resuming
//   {"cmd":"visibility","state":"hidden"}  makes document.visibilityState
//                                           say state, and fires visibilitychange
//   {"cmd":"script","code":"…"}            runs code in the page (a README
//                                           snippet), which may call report(line)
//   {"cmd":"exit"}
// and prints each status change, event and resync:
//   status a open code=0 http=0 reconnects=0 reason= delay=0
//   event a {"type":"…"} id=1764590000000-0
//   resync a reason=… last=1764590000000-0
//   ack a 1764590000000-0                 (each acknowledgement sent)
// (an EventSource prints "status s open", "status s error readyState=N",
// "event s DATA id=LAST_EVENT_ID" and "resync s DATA").
import readline from 'node:readline';
import { run, step, watch } from './browser.mjs';

const [pageURL, clientURL] = process.argv.slice(2);

await run(async (browser) => {
  const page = await browser.newPage();
  const problems = await watch(page);
  await page.addInitScript(() => {
    window.sockets = [];
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.sockets.push(this);
      }
    };
  });
  await page.exposeFunction('report', (line) => step(line));
  await page.goto(pageURL);
  await page.evaluate(async (url) => {
    window.fanout = await import(url);
    window.clients = {};
  }, clientURL);
  step('ready');

  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.cmd === 'exit') break;
    await page.evaluate((cmd) => {
      const mine = () => window.sockets.filter((ws) => new URL(ws.url).searchParams.get('client') === cmd.name);
      switch (cmd.cmd) {
        case 'connect': {
          const options = { ...cmd.options };
          const url = new URL(options.url);
          url.searchParams.set('client', cmd.name);
          options.url = url.href;
          if (cmd.tokenURL) options.token = async () => (await fetch(cmd.tokenURL)).text();
          options.onStatus = (s) =>
            window.report(`status ${cmd.name} ${s.state} code=${s.code} http=${s.httpStatus} reconnects=${s.reconnects} reason=${s.reason} delay=${s.delay}`);
          options.onEvent = (event, raw, info) => window.report(`event ${cmd.name} ${JSON.stringify(event)} id=${info?.id}`);
          options.onResync = (r) => window.report(`resync ${cmd.name} reason=${r.reason} last=${r.lastEventId}`);
          options.onAck = (id) => window.report(`ack ${cmd.name} ${id}`);
          window.clients[cmd.name] = window.fanout.connect(options);
          break;
        }
        case 'flood': {
          const ws = mine().at(-1);
          for (let i = 0; i < cmd.count; i++) ws.send(`{"n":${i}}`);
          break;
        }
        case 'sockets':
          window.report(`sockets ${cmd.name} ${mine().length}`);
          break;
        case 'urls':
          for (const ws of mine()) window.report(`url ${cmd.name} ${ws.url} protocol=${ws.protocol}`);
          break;
        case 'eventsource': {
          const source = new EventSource(cmd.url);
          source.onopen = () => window.report(`status ${cmd.name} open`);
          source.onerror = () => window.report(`status ${cmd.name} error readyState=${source.readyState}`);
          source.onmessage = (e) => window.report(`event ${cmd.name} ${e.data} id=${e.lastEventId}`);
          source.addEventListener('resync', (e) => window.report(`resync ${cmd.name} ${e.data}`));
          window.clients[cmd.name] = source;
          break;
        }
        case 'close':
          window.clients[cmd.name].close();
          break;
        case 'visibility':
          Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => cmd.state });
          document.dispatchEvent(new Event('visibilitychange'));
          break;
        case 'script':
          // The harness's own page, its own code: a README snippet.
          (0, eval)(cmd.code);
          break;
        default:
          throw new Error(`unknown command ${cmd.cmd}`);
      }
    }, cmd);
  }
  if (problems.length) throw new Error(`the page reported errors: ${problems.join('; ')}`);
});
