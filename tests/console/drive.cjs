// Drives the operator console in a real browser (Debian's Chromium through
// playwright-core) for tests/operations.rs: logs in with the API key, looks one job up,
// reads every figure the page shows, saves screenshots at desktop and phone widths, and
// prints what it read as JSON on stdout. Environment: BASE (the daemon), KEY (its API
// key), JOB (a job id to look up), OUT (where the screenshots go), CHROMIUM (the
// browser, default /usr/bin/chromium).
'use strict';
const { chromium } = require('playwright-core');

const { BASE, KEY, JOB, OUT } = process.env;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// Every element whose text is a figure, by id.
const FIGURES = [
  'queue-queued', 'queue-processing_batch', 'queue-sending', 'queue-sent', 'queue-failed',
  'info-mode', 'info-network', 'info-version', 'info-limit-max', 'info-limit-per',
  'rate-now', 'rate-limit',
  'pool-available', 'pool-available_sats', 'pool-reserved', 'pool-reserved_sats',
  'pool-dirty', 'pool-dirty_sats', 'pool-pending', 'pool-capacity',
  'sending-count', 'ready',
  'job-status', 'job-attempts', 'job-txid', 'job-anchor', 'job-last_error',
];

async function read(page) {
  return page.evaluate((ids) => {
    const text = (id) => {
      const el = document.getElementById(id);
      return el ? el.textContent.trim() : null;
    };
    const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr`)].map((tr) => Number(tr.dataset.id));
    const figures = Object.fromEntries(ids.map((id) => [id, text(id)]));
    return {
      figures,
      batches: rows('batches'),
      failed: rows('failed-jobs'),
      failedReasons: [...document.querySelectorAll('#failed-jobs tbody tr')].map((tr) => tr.textContent),
      sending: rows('sending-jobs'),
      history: [...document.querySelectorAll('#job-history li')].map((li) => li.dataset.txid),
      chartPoints: document.querySelectorAll('#rate-chart svg polyline, #rate-chart svg path').length,
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
      // The login prompt, when it shows.
      auth: (() => { const e = document.getElementById('auth'); return e && !e.hidden && e.offsetParent !== null ? e.textContent.trim() : null; })(),
      error: (() => { const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : null; })(),
    };
  }, FIGURES);
}

async function refreshed(page, after) {
  await page.waitForFunction(
    (n) => document.body.dataset.ok === '1' && Number(document.body.dataset.refreshes || 0) > n,
    after, { timeout: 30000 });
}

async function visit(browser, viewport, name) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1, isMobile: viewport.width < 500 });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The browser logs every 401 before the login as a failed load: that one is expected.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().includes('status of 401')) problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => { if (!r.url().startsWith(BASE)) problems.push(`request outside the daemon: ${r.url()}`); });
  // The last answer the page got from each API path: what its figures must show.
  const answers = {};
  page.on('response', async (r) => {
    const path = r.url().slice(BASE.length);
    if (!path.startsWith('/v1/') || r.status() !== 200) return;
    try { answers[path] = await r.json(); } catch (_) { /* not JSON */ }
  });
  await page.goto(`${BASE}/`);
  await page.waitForFunction(() => document.body.dataset.loaded === '1', null, { timeout: 30000 });
  const before = await read(page);
  // The key goes in through the login field, as an operator types it.
  await page.fill('#key', KEY);
  const refreshes = Number(await page.evaluate(() => document.body.dataset.refreshes || 0));
  await page.click('#key-button');
  await refreshed(page, refreshes);
  await page.fill('#lookup-id', String(JOB));
  await page.click('#lookup-button');
  await page.waitForFunction(() => {
    const s = document.getElementById('job-status');
    return s && s.textContent.trim() !== '';
  }, null, { timeout: 30000 });
  // One more whole refresh, so that every section shows the same moment.
  await refreshed(page, Number(await page.evaluate(() => document.body.dataset.refreshes)));
  const after = await read(page);
  const shown = JSON.parse(JSON.stringify(answers));
  await page.screenshot({ path: `${OUT}/console-${name}.png`, fullPage: true });
  const stored = await page.evaluate(() => ({
    local: Object.keys(localStorage).length,
    session: Object.keys(sessionStorage).length,
    cookie: document.cookie,
    url: location.href,
  }));
  await context.close();
  return { beforeLogin: { auth: before.auth, error: before.error }, ...after, answers: shown, stored, problems };
}

(async () => {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const desktop = await visit(browser, { width: 1280, height: 900 }, 'desktop');
    const phone = await visit(browser, { width: 390, height: 844 }, 'phone');
    process.stdout.write(JSON.stringify({ desktop, phone }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
