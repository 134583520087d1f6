// Drives the operator page (/admin/ on the admin listener) in headless
// Chromium while the Go test (console_test.go) opens connections and
// publishes. It prints one line per step reached; the test waits for them.
//
//   node operator.mjs ADMIN_URL ADMIN_TOKEN CONNECTIONS
//
// Steps: "token asked", "wrong token refused", "stats shown", "token kept"
// (the page reloaded without asking again; the test then opens the
// connections), "connections N", "chart drawn", "done". With
// FANOUT_SCREENSHOTS=DIR it saves DIR/operator.png, after 30 s of traffic.
import { run, screenshot, screenshots, step, watch } from './browser.mjs';

const [adminURL, token, connections] = process.argv.slice(2);
const timeout = 10000;

await run(async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = await watch(page);
  const resp = await page.goto(`${adminURL}/admin/`);
  if (!resp.headers()['content-security-policy']) throw new Error('the operator page has no Content-Security-Policy');

  // The page holds no data: it asks for the token on the first 401.
  await page.locator('#token-form').waitFor({ state: 'visible', timeout });
  step('token asked');
  await page.fill('#admin-token', 'not-the-admin-token-0123');
  await page.click('#token-form button');
  await page.locator('#token-error', { hasText: 'refused' }).waitFor({ timeout });
  step('wrong token refused');
  await page.fill('#admin-token', token);
  await page.click('#token-form button');
  await page.locator('#connections', { hasText: /^\d+$/ }).waitFor({ timeout });
  await page.locator('#ready[data-state="ready"]').waitFor({ timeout });
  step('stats shown');

  // The token is kept for the tab: a reload does not ask again.
  await page.reload();
  await page.locator('#connections', { hasText: /^\d+$/ }).waitFor({ timeout });
  if (await page.locator('#token-form').isVisible()) throw new Error('asked for the token again after a reload');
  step('token kept');

  // c) the connections the test opens appear within a refresh or two.
  await page.locator('#connections', { hasText: new RegExp(`^${connections}$`) }).waitFor({ timeout });
  step(`connections ${connections}`);
  await page.locator('#chart polyline.frames').waitFor({ timeout });
  await page.locator('#frames-total', { hasText: /^[1-9][\d,]* total$/ }).waitFor({ timeout });
  step('chart drawn');

  if (screenshots) {
    await page.waitForTimeout(30000);
    await screenshot(page, 'operator', { fullPage: true });
  }
  if (problems.length) throw new Error(`the page reported errors: ${problems.join('; ')}`);
  step('done');
});
