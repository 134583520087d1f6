// Drives the console page (/ on the public listener) in headless Chromium
// while the Go test (console_test.go) publishes events and restarts the
// daemon. It prints one line per step reached; the test waits for them.
//
//   node console.mjs SPEC_JSON
//
// SPEC_JSON: {url, username, history: [{type, run_id}…] (published before
// the page opens), first: {type, run_id} (one of them), whileDown: {type,
// run_id}, afterRestart: {type, run_id}, total, filter, filterMatches,
// select: {type, run_id}, seenID (the id alice's pages acknowledged, which
// the console shows), quiet: {url, whileDown: [{type, run_id}…], live:
// {type, run_id}}}. quiet is a second page, opened with ?username= in its
// URL, for a user without history: it has listed no event when the daemon
// restarts.
// Steps: "open", "detail ok", "quiet open", "reconnected", "quiet
// reconnected", "shown after restart", "quiet ids ID,ID,…" (the second
// page's rows' ids, oldest first), "filter ok", "paused" (the test then
// publishes one event), "resumed", "ids ID,ID,…" (every row's event id,
// oldest first), "done". With FANOUT_SCREENSHOTS=DIR it saves
// DIR/console.png at the end.
import { run, screenshot, step, watch } from './browser.mjs';

const spec = JSON.parse(process.argv[2]);
const timeout = 10000;

await run(async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const problems = await watch(page);
  const rowOn = (p, { type, run_id: runID }) =>
    p.locator(`#rows tr:has(td.type:text-is("${type}")):has(td.run:text-is("${runID}"))`);
  const row = (e) => rowOn(page, e);
  const waitFor = async (what, cond) => {
    const deadline = Date.now() + timeout;
    while (!(await cond())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await page.waitForTimeout(25);
    }
  };
  const rowCountOn = (p) => p.locator('#rows tr').count();
  const rowCount = () => rowCountOn(page);
  const idsOn = async (p) => (await p.locator('#rows td.id').allTextContents()).reverse();

  const resp = await page.goto(spec.url);
  if (!resp.headers()['content-security-policy']) throw new Error('the console has no Content-Security-Policy');
  await page.fill('#username', spec.username);
  await page.click('#connect-button');
  await page.locator('#status[data-state="open"]').waitFor({ timeout });
  if (!new URL(page.url()).searchParams.get('username')) throw new Error('username not kept in the page URL');
  step('open');

  // a) the events published before the page opened are listed (the
  // retained history), each with its type and run_id; a click shows its JSON.
  for (const e of spec.history) await row(e).waitFor({ timeout });
  if ((await rowCount()) !== spec.history.length) throw new Error(`${await rowCount()} rows at open, want the ${spec.history.length} retained events`);
  await row(spec.first).click();
  const text = await page.locator('#json').textContent();
  const shown = JSON.parse(text);
  if (shown.type !== spec.first.type || shown.run_id !== spec.first.run_id || !text.includes('\n  "run_id": ')) {
    throw new Error(`detail pane shows ${JSON.stringify(text)}`);
  }
  const firstID = await row(spec.first).locator('td.id').textContent();
  // What alice's own pages acknowledged (read receipts), polled from /ack.
  await page.locator(`#seen[data-seen="${spec.seenID}"]`).waitFor({ timeout });
  const meta = await page.locator('#detail-meta').textContent();
  if (!/^\d+-\d+$/.test(firstID) || !meta.startsWith(`id ${firstID} · `)) {
    throw new Error(`the event's id is ${JSON.stringify(firstID)}, the detail says ${JSON.stringify(meta)}`);
  }
  step('detail ok');

  // A second page, connected by its URL, for a user with no history yet.
  const quiet = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const quietProblems = await watch(quiet);
  await quiet.goto(spec.quiet.url);
  await quiet.locator('#status[data-state="open"]').waitFor({ timeout });
  if ((await rowCountOn(quiet)) !== 0 || !(await quiet.locator('#empty').isVisible())) throw new Error('the quiet page lists events');
  step('quiet open');

  // b) the daemon restarts before either page gets a new event: the badge
  // counts the reconnect, the events published while it was down are
  // listed, events flow again.
  await page.locator('#status[data-state="open"][data-reconnects="1"]').waitFor({ timeout });
  const badge = await page.locator('#status').textContent();
  if (!badge.includes('1 reconnect')) throw new Error(`badge says ${JSON.stringify(badge)}`);
  step('reconnected');
  // The page that had listed nothing gets them too.
  await quiet.locator('#status[data-state="open"][data-reconnects="1"]').waitFor({ timeout });
  for (const e of spec.quiet.whileDown) await rowOn(quiet, e).waitFor({ timeout });
  step('quiet reconnected');
  await row(spec.whileDown).waitFor({ timeout });
  await row(spec.afterRestart).waitFor({ timeout });
  step('shown after restart');
  await rowOn(quiet, spec.quiet.live).waitFor({ timeout });
  step(`quiet ids ${(await idsOn(quiet)).join(',')}`);
  if (quietProblems.length) throw new Error(`the quiet page reported errors: ${quietProblems.join('; ')}`);
  await quiet.close();

  // Filter by run_id, then by type.
  await waitFor(`${spec.total} events`, async () => (await rowCount()) === spec.total);
  await page.fill('#filter', spec.filter);
  await waitFor('the filter', async () => (await rowCount()) === spec.filterMatches);
  const runs = await page.locator('#rows td.run').allTextContents();
  if (runs.some((r) => r !== spec.filter)) throw new Error(`filter ${spec.filter} shows ${runs}`);
  const count = await page.locator('#count').textContent();
  if (count !== `${spec.filterMatches} of ${spec.total} events shown`) throw new Error(`count says ${JSON.stringify(count)}`);
  await page.fill('#filter', spec.afterRestart.type);
  const types = await page.locator('#rows td.type').allTextContents();
  if (!types.length || types.some((t) => t !== spec.afterRestart.type)) throw new Error(`type filter shows ${types}`);
  await page.fill('#filter', '');
  await waitFor('the filter cleared', async () => (await rowCount()) === spec.total);
  step('filter ok');

  // Pause holds new events back; resume lists them.
  await page.click('#pause');
  step('paused');
  await page.locator('#pause', { hasText: 'Resume (1 new)' }).waitFor({ timeout });
  if ((await rowCount()) !== spec.total) throw new Error('an event was listed while paused');
  await page.click('#pause');
  await waitFor('the held event', async () => (await rowCount()) === spec.total + 1);
  step('resumed');
  step(`ids ${(await idsOn(page)).join(',')}`);

  // Clear empties the list and the detail pane.
  await row(spec.select).click();
  if (problems.length) throw new Error(`the page reported errors: ${problems.join('; ')}`);
  await screenshot(page, 'console');
  await page.click('#clear');
  await waitFor('an empty list', async () => (await rowCount()) === 0);
  if ((await page.locator('#json').textContent()) !== 'Click an event to see its JSON.') throw new Error('clear left the detail pane');
  step('done');
});
