// End-to-end smoke test of the web app against a running local stack
// (./build.sh run), driving Debian's chromium through playwright-core (no
// browser download).  Screenshots go to build/e2e/.
//
//   CINEMATCH_URL   [http://127.0.0.1:8080]   the stack's nginx
//   CINEMATCH_VAR   [../var]                  the stack's var dir: when the
//                   catalogue is empty (the stack does not ingest movies.csv
//                   yet), movies are seeded through its owner DSN with psql
//   CINEMATCH_DATA  [../../shared/data/ml-latest-small]
//   CHROMIUM        [/usr/bin/chromium]
//
// Prints one line per step and "N passed, N failed" last; exit 1 on a failure.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const BASE = process.env.CINEMATCH_URL || 'http://127.0.0.1:8080';
const VAR = process.env.CINEMATCH_VAR || join(root, 'var');
const DATA = process.env.CINEMATCH_DATA || join(root, '..', 'shared', 'data', 'ml-latest-small');
const SHOTS = join(root, 'build', 'e2e');
const PSQL = join(process.env.PG_BIN || '/usr/lib/postgresql/15/bin', 'psql');

// movies.csv (RFC 4180) → COPY text rows: id, title without "(year)", year, {genres}
export function moviesToCopy(csv) {
  const rows = [];
  const lines = csv.split(/\r?\n/).slice(1);
  for (const line of lines) {
    if (!line) continue;
    const m = /^(\d+),("(?:[^"]|"")*"|[^,]*),(.*)$/.exec(line);
    if (!m) continue;
    let title = m[2].startsWith('"') ? m[2].slice(1, -1).replace(/""/g, '"') : m[2];
    title = title.trim();
    const y = /\((\d{4})\)\s*$/.exec(title);
    const year = y && +y[1] >= 1870 && +y[1] <= 2100 ? y[1] : '\\N';
    if (y) title = title.slice(0, y.index).trim();
    if (!title) continue;
    const genres = m[3] === '(no genres listed)' ? [] : m[3].split('|');
    const arr = `{${genres.map((g) => `"${g.replace(/["\\]/g, '')}"`).join(',')}}`;
    const esc = (s) => s.replace(/\\/g, '\\\\').replace(/\t/g, ' ').replace(/\n/g, ' ');
    rows.push([m[1], esc(title), year, esc(arr)].join('\t'));
  }
  return rows.join('\n') + '\n';
}

async function seedIfEmpty() {
  const r = await fetch(`${BASE}/api/v1/movies?limit=1`).then((x) => x.json());
  if (r.total > 0) return `catalogue has ${r.total} movies`;
  const dsnFile = join(VAR, 'secrets', 'pg_dsn');
  const csv = join(DATA, 'movies.csv');
  if (!existsSync(dsnFile) || !existsSync(csv)) return 'catalogue empty and no way to seed it (steps needing movies will fail)';
  const dsn = readFileSync(dsnFile, 'utf8').trim();
  execFileSync(PSQL, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', dsn, '-c',
    'COPY movies (movie_id, title, year, genres) FROM STDIN'], { input: moviesToCopy(readFileSync(csv, 'utf8')) });
  const n = await fetch(`${BASE}/api/v1/movies?limit=1`).then((x) => x.json());
  return `seeded ${n.total} movies from ${csv}`;
}

const results = [];
async function step(name, fn) {
  const t0 = Date.now();
  try {
    const note = await fn();
    results.push(true);
    console.log(`ok   ${name} (${Date.now() - t0} ms)${note ? `: ${note}` : ''}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name}: ${String(e.message || e).split('\n')[0]}`);
  }
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  await step('catalogue', seedIfEmpty);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(e.message));
  const shot = (n) => page.screenshot({ path: join(SHOTS, `${n}.png`), fullPage: false });
  const email = `e2e-${Date.now()}@example.com`;
  const t0 = Date.now();

  await step('home page renders with popular movies', async () => {
    await page.goto(BASE + '/');
    await page.getByRole('heading', { name: /Tonight's feature/ }).waitFor();
    await page.locator('.grid .card').first().waitFor();
    const posters = Date.now() - t0;
    const fcp = await page.evaluate(() => {
      const e = performance.getEntriesByName('first-contentful-paint')[0];
      return e ? Math.round(e.startTime) : -1;
    });
    await shot('01-home');
    return `first contentful paint ${fcp} ms, popular posters shown ${posters} ms after navigation started`;
  });
  await step('sign up (and get logged in)', async () => {
    await page.getByRole('link', { name: 'Sign up' }).click();
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill('correct horse battery');
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.getByRole('heading', { name: 'Your picks' }).waitFor();
    await page.getByRole('button', { name: 'Log out' }).waitFor();
    await shot('02-signed-up');
  });
  await step('log out, then log in again', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('link', { name: 'Log in' }).first().click();
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill('wrong password!');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByText('Wrong email or password.').waitFor();
    await page.getByLabel('Password').fill('correct horse battery');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Your picks' }).waitFor();
  });
  let before = [];
  await step('recommendations (or the popular fallback) are shown', async () => {
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    before = await page.locator('.card-title').allInnerTexts();
    const fallback = await page.getByText(/popular picks|Popular instead/).count();
    await shot('03-for-you');
    return `${before.length} movies${fallback ? ' (popular fallback)' : ''}`;
  });
  await step('search with genre and year filters', async () => {
    await page.getByRole('link', { name: 'Movies', exact: true }).click();
    await page.getByPlaceholder('Search titles…').fill('Toy Story');
    await page.getByRole('combobox', { name: 'Genre' }).selectOption('Animation');
    await page.getByPlaceholder('year').first().fill('1990');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForURL(/genre=Animation/);
    await page.locator('.card-title', { hasText: 'Toy Story' }).first().waitFor();
    await shot('04-search');
    return page.locator('.muted[aria-live]').innerText();
  });
  await step('movie page with similar movies and the rating widget', async () => {
    await page.locator('.card-title', { hasText: 'Toy Story' }).first().click();
    await page.getByRole('heading', { level: 1, name: /Toy Story/ }).waitFor();
    await page.getByRole('heading', { name: 'More like this' }).waitFor();
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    const slider = page.getByRole('slider', { name: 'Your rating' });
    await slider.focus();
    await page.keyboard.press('End');
    await page.keyboard.press('ArrowLeft');
    await page.waitForTimeout(500);
    await shot('05-movie');
    const said = await page.locator('.rate').innerText();
    return said.includes('Saved') ? 'rating saved' : `rating: ${said.replace(/\s+/g, ' ').slice(0, 80)}`;
  });
  // Direct loads: each one restores the session from the refresh token.
  const rateByUrl = async (id) => {
    await page.goto(`${BASE}/movies/${id}`);
    const slider = page.getByRole('slider', { name: 'Your rating' });
    await slider.waitFor();
    await slider.focus();
    await page.keyboard.press('End');
    await page.getByText(/Saved\.|not available/).waitFor();
  };
  await step('session survives a reload; rate two more movies', async () => {
    await rateByUrl(2571);   // The Matrix
    await rateByUrl(260);    // Star Wars IV
    await page.getByRole('button', { name: 'Log out' }).waitFor();
    return (await page.locator('.rate').innerText()).replace(/\s+/g, ' ').slice(0, 60);
  });
  await step('recommendations change after rating (fold-in, "because you liked")', async () => {
    await page.getByRole('link', { name: 'For you' }).click();
    await page.getByRole('heading', { name: 'Your picks' }).waitFor();
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    const after = await page.locator('.card-title').allInnerTexts();
    const because = await page.locator('.because').count();
    await shot('06-for-you-after-rating');
    if (JSON.stringify(after) === JSON.stringify(before)) throw new Error('the list did not change');
    if (because === 0) throw new Error('no "because you liked" line');
    return `${because} of ${after.length} with "because you liked"; first: ${after[0]}`;
  });
  await step('account: create an API key and use it', async () => {
    await page.getByRole('link', { name: email }).click();
    await page.getByRole('heading', { name: 'Your account' }).waitFor();
    await page.getByLabel('New key name').fill('e2e key');
    await page.getByRole('button', { name: 'Create key' }).click();
    const key = (await page.getByLabel('new API key').innerText()).trim();
    await shot('07-account');
    const r = await fetch(`${BASE}/api/v1/auth/me`, { headers: { Authorization: `Bearer ${key}` } });
    if (r.status !== 200) throw new Error(`GET /auth/me with the new key: ${r.status}`);
    return `key ${key.slice(0, 6)}… works`;
  });
  await step('chat: a message streams a reply (or the error says why)', async () => {
    await page.getByRole('link', { name: 'Chat', exact: true }).click();
    await page.getByRole('button', { name: '+ New chat' }).waitFor();
    await page.getByLabel('Message', { exact: true }).fill('a heist film with a twist');
    await page.getByRole('button', { name: 'Send' }).click();
    // the stream ends when the Send button is back (Stop while it runs)
    await page.getByRole('button', { name: 'Send' }).waitFor({ timeout: 60000 });
    const reply = (await page.locator('.msg.assistant .bubble').last().innerText()).trim();
    const alert = await page.getByRole('alert').allInnerTexts();
    await shot('07b-chat');
    const mode = (await page.getByText(/lives in this tab only/).count()) ? 'tab-only chat via /v1/chat/completions' : 'conversation API';
    if (!reply && alert.length === 0) throw new Error('no reply and no error shown');
    return `${mode}: ${reply ? `reply "${reply.slice(0, 40)}"` : `error "${alert[0]}"`}`;
  });
  await step('phone-sized viewport: no horizontal scrolling', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(BASE + '/movies?q=star%20wars');
    await page.locator('.grid .card').first().waitFor();
    const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await shot('08-phone-search');
    await page.setViewportSize({ width: 1280, height: 860 });
    if (over > 1) throw new Error(`page is ${over} px wider than the viewport`);
  });
  await step('API docs page renders the OpenAPI description', async () => {
    await page.goto(BASE + '/api/docs/');
    await page.getByText('cinematch API').first().waitFor({ timeout: 15000 });
    await shot('09-api-docs');
  });
  await step('no uncaught page errors', async () => {
    if (consoleErrors.length) throw new Error(consoleErrors.join('; '));
  });
  await browser.close();
  const passed = results.filter(Boolean).length;
  console.log(`${passed} passed, ${results.length - passed} failed`);
  process.exit(passed === results.length ? 0 : 1);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
