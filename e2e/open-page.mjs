// Opens a page in headless Chromium (Debian's, driven by playwright-core)
// and reports, one line each on stdout, the page's title whenever it
// changes, until the title equals the wanted one or the time runs out.
//
//   node open-page.mjs URL WANTED_TITLE [TIMEOUT_MS]
//
// Exit status 0 when the title was reached, 1 otherwise.
import { chromium } from 'playwright-core';

const [url, wanted, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 20000);
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let status = 1;
try {
  const page = await browser.newPage();
  page.on('console', (msg) => console.error(`console: ${msg.text()}`));
  page.on('pageerror', (err) => console.error(`page error: ${err.message}`));
  await page.goto(url);
  const deadline = Date.now() + timeout;
  let last = null;
  while (Date.now() < deadline) {
    const title = await page.title();
    if (title !== last) {
      console.log(title);
      last = title;
    }
    if (title === wanted) {
      status = 0;
      break;
    }
    await page.waitForTimeout(25);
  }
} finally {
  await browser.close();
}
process.exit(status);
