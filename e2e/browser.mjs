// Shared by the e2e scripts: launches Debian's chromium headless with
// playwright-core, and small helpers for bounded waits and screenshots.
import path from 'node:path';
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

// watch forwards the page's console errors and uncaught exceptions to
// stderr, and records them (and any Content-Security-Policy violation) in
// the returned list, so that a script can fail when the page misbehaved.
export async function watch(page) {
  const problems = [];
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    console.error(`console: ${msg.text()}`);
    // A refused handshake or fetch is logged by Chromium itself; only the
    // page's own errors count.
    if (!/WebSocket connection to|Failed to load resource/.test(msg.text())) problems.push(msg.text());
  });
  page.on('pageerror', (err) => {
    console.error(`page error: ${err.message}`);
    problems.push(err.message);
  });
  return problems;
}

// step prints a progress line that the Go test waits for.
export function step(line) {
  console.log(line);
}

// screenshot saves the page as NAME.png in $FANOUT_SCREENSHOTS, if set.
export async function screenshot(page, name, options = {}) {
  const dir = process.env.FANOUT_SCREENSHOTS;
  if (!dir) return false;
  const file = path.resolve(dir, `${name}.png`);
  await page.screenshot({ ...options, path: file });
  step(`screenshot ${file}`);
  return true;
}

export const screenshots = Boolean(process.env.FANOUT_SCREENSHOTS);

// run runs main with a browser and exits 0 when it succeeds, 1 otherwise.
export async function run(main) {
  const browser = await launch();
  let status = 1;
  try {
    await main(browser);
    status = 0;
  } catch (err) {
    console.error(`FAILED: ${err.stack || err}`);
  } finally {
    await browser.close();
  }
  process.exit(status);
}
