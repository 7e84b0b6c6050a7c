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
//   CINEMATCH_BIN   [../build/cinematch]      makes the admin account (user
//                   create --admin) and a drift report when there is none
//   CINEMATCH_ADMIN "email password" of an existing admin; else
//                   $CINEMATCH_VAR/secrets/admin_user (same format) when the
//                   stack made one; else one is created through the owner DSN
//
// The issue's flow: sign up, the verification and password-reset mail links
// (tokens read from var/mail/*.eml or mail_outbox), rate three movies, recommendations change, a
// similar movie's page, chat with tokens streaming, Stop mid-reply (partial
// reply shown and saved), thumbs feedback, and the admin's run/drift panels.
// The chat steps need a model that takes visible time per token:
// web/e2e/run.sh serves one (an untrained dialog-small, 15-30 tokens/s) and
// runs strictly; against a stack whose model answers in a millisecond (the
// stack's own demo model) those two steps report "skip", not a failure.
//
//   E2E_STRICT=1    a skip counts as a failure (web/e2e/run.sh sets it)
//
// Prints one line per step and "N passed, N failed[, N skipped]" last; exit 1
// on a failure.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
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
const BIN = process.env.CINEMATCH_BIN || join(root, 'build', 'cinematch');

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ownerDsn = () => {
  const f = join(VAR, 'secrets', 'pg_dsn');
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : null;
};

// In the page: every chunk a fetch() body reader returns that carries SSE
// events, with its time and the events in it (window.__sse), so the test can
// tell tokens that arrived one by one from a reply that came in one piece.
function recordSseChunks() {
  window.__sse = [];
  const read = ReadableStreamDefaultReader.prototype.read;
  const dec = new TextDecoder();
  ReadableStreamDefaultReader.prototype.read = async function (...a) {
    const r = await read.apply(this, a);
    if (r && r.value instanceof Uint8Array) {
      // the end of the previous chunk joins this one, so an event line split
      // between two reads is seen; a line is counted in the read it ends in
      const tail = this.__tail || '';
      const text = tail + dec.decode(r.value, { stream: true });
      this.__tail = text.slice(-16);
      const count = (ev) => [...text.matchAll(new RegExp(`event: ${ev}\\n`, 'g'))]
        .filter((m) => m.index + m[0].length > tail.length).length;
      const tokens = count('token');
      const done = count('done');
      if (tokens || done) window.__sse.push({ t: performance.now(), tokens, done });
    }
    return r;
  };
}

// In the page: the texts the streaming reply showed, one per DOM change,
// while its caret was there (window.__frames).
function watchReply() {
  window.__frames = [];
  const list = document.querySelector('.messages');
  const obs = new MutationObserver(() => {
    const caret = list.querySelector('.msg.assistant .caret');
    if (!caret) return;
    const text = caret.parentElement.textContent.replace('▍', '');
    const f = window.__frames;
    if (text && f[f.length - 1] !== text) f.push(text);
  });
  obs.observe(list, { subtree: true, childList: true, characterData: true });
  window.__stopWatching = () => obs.disconnect();
}

// Sampling that keeps the tiny demo model talking until its 64-token
// context is full (it often ends its turn at once with the defaults), added
// to the app's own request body.
const LONG = { max_tokens: 60, temperature: 2.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0 };

// The one-time token of the newest mail of `kind` to `email`: from the
// stack's mailer in development mode (an .eml file per mail in var/mail/,
// waited for: the mailer wakes on the outbox's NOTIFY), else still in the
// outbox (no mailer running: the raw token waits there), or null.
async function mailToken(email, kind) {
  const dir = join(VAR, 'mail');
  const path = kind === 'verify_email' ? 'verify-email' : 'reset-password';
  const re = new RegExp(`/${path}\\?token=([A-Za-z0-9_%.~-]+)`);
  for (let i = 0; i < 30 && existsSync(dir); i++) {
    const files = readdirSync(dir).filter((f) => f.endsWith('.eml'))
      .map((f) => join(dir, f)).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
    for (const f of files) {
      const text = readFileSync(f, 'utf8');
      if (!text.includes(`To: <${email}>`)) continue;
      const m = re.exec(text);
      if (m) return decodeURIComponent(m[1]);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const dsn = ownerDsn();
  if (!dsn) return null;
  const out = execFileSync(PSQL, ['-X', '-At', '-v', 'ON_ERROR_STOP=1', dsn, '-v', `e=${email}`, '-v', `k=${kind}`],
    { input: "SELECT token FROM mail_outbox WHERE to_addr = :'e' AND kind = :'k' AND token IS NOT NULL ORDER BY id DESC LIMIT 1\n" }).toString().trim();
  return out || null;
}

function adminAccount() {
  if (process.env.CINEMATCH_ADMIN) return process.env.CINEMATCH_ADMIN.trim().split(/\s+/);
  const f = join(VAR, 'secrets', 'admin_user');
  if (existsSync(f)) return readFileSync(f, 'utf8').trim().split(/\s+/);
  const dsn = ownerDsn();
  if (!dsn) throw new Error('no admin account: set CINEMATCH_ADMIN or CINEMATCH_VAR');
  const email = `e2e-admin-${Date.now()}@example.com`;
  const pw = `e2e admin ${Math.random().toString(36).slice(2)}`;
  execFileSync(BIN, ['user', 'create', '--admin', '--email', email, '--password-stdin', '--dsn', dsn],
    { input: pw, stdio: ['pipe', 'ignore', 'pipe'] });
  return [email, pw];
}

// A step that cannot be checked on this stack throws a Skip (counted apart).
class Skip extends Error {}
const STRICT = process.env.E2E_STRICT === '1';   // web/e2e/run.sh: no skips
const results = [];
let skipped = 0;
let onFailure = async () => {};
async function step(name, fn) {
  const t0 = Date.now();
  try {
    const note = await fn();
    results.push(true);
    console.log(`ok   ${name} (${Date.now() - t0} ms)${note ? `: ${note}` : ''}`);
  } catch (e) {
    if (e instanceof Skip && !STRICT) {
      skipped += 1;
      console.log(`skip ${name}: ${e.message}`);
      return;
    }
    results.push(false);
    console.log(`FAIL ${name}: ${String(e.message || e).split('\n')[0]}`);
    await onFailure(results.length).catch(() => {});
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
  await page.addInitScript(recordSseChunks);
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(e.message));
  const shot = (n) => page.screenshot({ path: join(SHOTS, `${n}.png`), fullPage: false });
  onFailure = (n) => page.screenshot({ path: join(SHOTS, `failed-step-${n}.png`), fullPage: true });
  const email = `e2e-${Date.now()}@example.com`;
  let password = 'correct horse battery';
  const password2 = 'a new horse battery';
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
    await page.getByLabel('Password').fill(password);
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
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Your picks' }).waitFor();
  });
  await step('the verification mail\'s link confirms the address', async () => {
    const token = await mailToken(email, 'verify_email');
    if (!token) throw new Skip('no verification mail to follow (none in var/mail/, none in the outbox)');
    await page.goto(`${BASE}/verify-email?token=${encodeURIComponent(token)}`);
    await page.getByText('Your email address is confirmed. Thank you!').waitFor();
    if (new URL(page.url()).search) throw new Error(`the token stays in the address bar: ${page.url()}`);
    await shot('02b-email-verified');
    // the same link again: single use
    await page.goto(`${BASE}/verify-email?token=${encodeURIComponent(token)}`);
    await page.getByText(/invalid, has expired or was already used/).waitFor();
    return 'confirmed; the link works once';
  });
  await step('forgot password: the reset link sets a new password', async () => {
    await page.goto(`${BASE}/`);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('link', { name: 'Log in' }).first().click();
    await page.getByRole('button', { name: 'Forgot your password?' }).click();
    await page.getByLabel('Email for the reset link').fill(email);
    await page.getByRole('button', { name: 'Send me a reset link' }).click();
    const said = await page.getByRole('status').filter({ hasText: 'If an account has this address' }).innerText();
    // an unknown address reads the same
    await page.goto(`${BASE}/login?forgot=1`);
    await page.getByLabel('Email for the reset link').fill(`nobody-${Date.now()}@example.com`);
    await page.getByRole('button', { name: 'Send me a reset link' }).click();
    const other = await page.getByRole('status').filter({ hasText: 'If an account has this address' }).innerText();
    if (other !== said) throw new Error(`different answers: "${said}" / "${other}"`);
    await shot('02c-forgot-password');
    const token = await mailToken(email, 'reset_password');
    if (!token) throw new Skip('no reset mail in the outbox to follow');
    await page.goto(`${BASE}/reset-password?token=${encodeURIComponent(token)}`);
    await page.getByLabel('New password', { exact: true }).fill(password2);
    await page.getByLabel('New password again').fill(password2);
    await page.getByRole('button', { name: 'Set the new password' }).click();
    await page.getByText('Your password is changed.').waitFor();
    await shot('02d-password-reset');
    await page.getByRole('link', { name: /Log in with the new password/ }).click();
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByText('Wrong email or password.').waitFor();
    password = password2;
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Your picks' }).waitFor();
    return 'same answer for a known and an unknown address; the old password is refused, the new one works';
  });
  let before = [];
  await step('recommendations (or the popular fallback) are shown', async () => {
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    before = await page.locator('.card-title').allInnerTexts();
    const fallback = await page.getByText(/popular picks|Popular instead/).count();
    await shot('03-for-you');
    return `${before.length} movies${fallback ? ' (popular fallback)' : ''}`;
  });
  // Three of the most popular movies, whatever the catalogue (MovieLens or
  // `cinematch synth` data): the first is searched for and rated from its
  // page, the other two by direct loads.
  let picks = [];
  await step('three popular movies to rate', async () => {
    const pop = await fetch(`${BASE}/api/v1/popular?k=20`).then((r) => r.json());
    for (const m of pop.recommendations || []) {
      const full = await fetch(`${BASE}/api/v1/movies/${m.movie_id}`).then((r) => r.json());
      if (full.year && full.genres && full.genres.length && !/["\\]/.test(full.title)) picks.push(full);
      if (picks.length === 3) break;
    }
    if (picks.length < 3) throw new Error(`only ${picks.length} usable popular movies`);
    return picks.map((m) => `${m.title} (${m.year})`).join(', ');
  });
  const [first, second, third] = [0, 1, 2].map((i) => () => picks[i] || { movie_id: 1, title: '?', genres: ['Drama'], year: 2000 });
  await step('search with genre and year filters', async () => {
    const m = first();
    await page.getByRole('link', { name: 'Movies', exact: true }).click();
    await page.getByPlaceholder('Search titles…').fill(m.title);
    await page.getByRole('combobox', { name: 'Genre' }).selectOption(m.genres[0]);
    await page.getByPlaceholder('year').first().fill(String(m.year - 1));
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForURL((u) => u.searchParams.get('genre') === m.genres[0]);
    await page.locator('.card-title', { hasText: m.title }).first().waitFor();
    await shot('04-search');
    return `"${m.title}", ${m.genres[0]}, from ${m.year - 1}: ${await page.locator('.muted[aria-live]').innerText()}`;
  });
  await step('movie page with similar movies; rate it 4.5 stars', async () => {
    const m = first();
    await page.locator('.card-title', { hasText: m.title }).first().click();
    await page.getByRole('heading', { level: 1, name: m.title }).waitFor();
    await page.getByRole('heading', { name: 'More like this' }).waitFor();
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    const slider = page.getByRole('slider', { name: 'Your rating' });
    await slider.focus();
    await page.keyboard.press('End');
    await page.getByText('Saved.').waitFor();
    await page.keyboard.press('ArrowLeft');
    await page.locator('.stars[aria-valuenow="4.5"]').waitFor();
    await page.getByText('Saved.').waitFor();
    await shot('05-movie');
    return `${await slider.getAttribute('aria-valuenow')} stars saved`;
  });
  // Direct loads: each one restores the session from the refresh token.
  const rateByUrl = async (id) => {
    await page.goto(`${BASE}/movies/${id}`);
    const slider = page.getByRole('slider', { name: 'Your rating' });
    await slider.waitFor();
    await slider.focus();
    await page.keyboard.press('End');
    await page.getByText('Saved.').waitFor();
  };
  await step('session survives a reload; rate two more movies', async () => {
    await rateByUrl(second().movie_id);
    await rateByUrl(third().movie_id);
    await page.getByRole('button', { name: 'Log out' }).waitFor();
    return `${second().title} and ${third().title}: 5 stars`;
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
  await step('open a similar movie\'s page from "More like this"', async () => {
    await page.goto(`${BASE}/movies/${second().movie_id}`);
    await page.getByRole('heading', { name: 'More like this' }).waitFor();
    const first = page.locator('.grid .card').first();
    await first.waitFor({ timeout: 15000 });
    const title = (await first.locator('.card-title').innerText()).trim();
    const match = (await first.locator('.badge').innerText()).trim();
    await first.locator('.card-link').click();
    await page.getByRole('heading', { level: 1, name: title }).waitFor();
    await page.locator('.grid .card').first().waitFor({ timeout: 15000 });
    await shot('06b-similar-movie');
    return `${second().title} → "${title}" (${match}), its own similar list shown`;
  });

  // the app's message requests get the long-reply sampling
  await page.route('**/api/v1/conversations/*/messages', (route) => {
    const body = { ...JSON.parse(route.request().postData() || '{}'), ...LONG };
    return route.continue({ postData: JSON.stringify(body) });
  });
  const reply = page.locator('.msg.assistant .bubble').last();
  const sawDone = () => window.__sse.some((c) => c.done);
  const ask = async (text) => {
    await page.getByLabel('Message', { exact: true }).fill(text);
    await page.evaluate(() => { window.__sse = []; });
    await page.evaluate(watchReply);
    await page.getByRole('button', { name: 'Send' }).click();
  };
  // What the network and the page saw of one reply.
  const streamed = async () => {
    const frames = await page.evaluate(() => { window.__stopWatching(); return window.__frames; });
    const chunks = await page.evaluate(() => window.__sse);
    const doneAt = chunks.findIndex((c) => c.done);
    const tokens = chunks.reduce((n, c) => n + c.tokens, 0);
    const reads = chunks.filter((c) => c.tokens).length;
    const early = chunks.slice(0, doneAt < 0 ? chunks.length : doneAt).reduce((n, c) => n + c.tokens, 0);
    const ms = chunks.length ? Math.round(chunks[Math.max(doneAt, 0)].t - chunks[0].t) : 0;
    const ok = reads >= 3 && early > 0 && frames.length >= 3;
    return { ok, done: doneAt >= 0, tokens, reads, text: `${tokens} tokens in ${reads} reads over ${ms} ms, ${early} before done, ${frames.length} texts on screen` };
  };
  // Up to three tries: a reply may end at once (the model chose to), and a
  // busy machine can stall a decode step past the daemon heartbeat.
  const tries = [1, 2, 3];
  let chatUrl = null;
  await step('chat: the reply streams in token by token', async () => {
    await page.getByRole('link', { name: 'Chat', exact: true }).click();
    await page.getByRole('button', { name: '+ New chat' }).waitFor();
    const seen = [];
    let r;
    for (const i of tries) {
      await ask(i > 1 ? `and another one, please (${i})` : 'a heist film with a twist');
      // the reply ends with a done event, or an error is shown; then the
      // Send button is back (Stop while it runs; a first message creates
      // the conversation first, so Send is still there for a moment)
      await page.waitForFunction(() => window.__sse.some((c) => c.done) || document.querySelector('[role="alert"]'),
        null, { timeout: 60000 });
      await page.getByRole('button', { name: 'Send' }).waitFor({ timeout: 60000 });
      const alert = await page.getByRole('alert').allInnerTexts();
      r = await streamed();
      seen.push(alert.length ? `error "${alert[0]}"` : r.text);
      if (alert.length) { r.ok = false; continue; }
      if (r.ok) break;
    }
    chatUrl = page.url();
    const text = (await reply.innerText()).trim();
    await shot('07b-chat');
    if (!/\/chat\/[^/]+$/.test(chatUrl)) throw new Error(`the new conversation has no URL: ${chatUrl}`);
    if (!r.done && r.ok) throw new Error('no done event');
    const why = `tokens did not arrive one by one: ${seen.join('; ')}`;
    // A whole reply in one read is what a millisecond-fast model gives too:
    // on such a stack this is not a finding (web/e2e/run.sh serves a slower
    // model and is strict).
    if (!r.ok) throw new (r.reads <= 1 ? Skip : Error)(`${why}; the stack's dialog model answers in one piece (web/e2e/run.sh serves a slower one)`);
    return `${seen.join('; then ')}; "${text.slice(0, 30)}…"`;
  });
  let partial = '';
  await step('chat: Stop ends a reply mid-stream; the partial reply is shown and saved', async () => {
    const seen = [];
    let ok = false;
    let shown = '';
    for (const _ of tries) { // eslint-disable-line no-unused-vars
      await page.getByRole('button', { name: '+ New chat' }).click();
      await page.waitForURL((u) => u.href !== chatUrl && /\/chat\/[^/]+$/.test(u.pathname));
      chatUrl = page.url();
      await ask('tell me a long story about a bank job');
      // a few tokens in, Stop
      const until = () => (window.__frames || []).length >= 3 || window.__sse.some((c) => c.done);
      await page.waitForFunction(until, null, { timeout: 30000 });
      shown = ((await page.evaluate(() => window.__frames.at(-1))) || '').trim();
      let done = await page.evaluate(sawDone);
      if (!done) {
        // a reply that ends meanwhile takes the Stop button with it
        await page.getByRole('button', { name: '■ Stop' }).click({ timeout: 3000 }).catch(() => { done = true; });
      }
      await page.getByRole('button', { name: 'Send' }).waitFor();
      seen.push(done ? 'finished before Stop' : `stopped after ${shown.length} characters`);
      if (!done) { ok = true; break; }
    }
    if (!ok) throw new Skip(`no reply could be stopped mid-stream: ${seen.join('; ')}; the stack's dialog model answers too fast (web/e2e/run.sh serves a slower one)`);
    await page.getByText('(stopped: the partial reply is saved)').waitFor({ timeout: 10000 });
    partial = (await reply.innerText()).trim();
    await shot('07c-chat-stopped');
    if (!partial.startsWith(shown)) throw new Error(`saved "${partial}" does not start with what was shown, "${shown}"`);
    // what the server stored, as a reload shows it
    await page.reload();
    await page.getByText('(stopped: the partial reply is saved)').waitFor();
    const after = (await reply.innerText()).trim();
    if (after !== partial) throw new Error(`after a reload "${after}" instead of "${partial}"`);
    return `${seen.join('; ')}; ${partial.length} characters saved (status partial)`;
  });
  await step('chat: thumbs feedback on a reply is stored', async () => {
    const msg = page.locator('.msg.assistant').last();
    await msg.getByRole('button', { name: 'Good answer' }).click();
    await page.waitForFunction(() => {
      const b = [...document.querySelectorAll('.msg.assistant')].at(-1).querySelector('[aria-label="Good answer"]');
      return b && b.getAttribute('aria-pressed') === 'true';
    });
    await page.reload();
    const good = page.locator('.msg.assistant').last().getByRole('button', { name: 'Good answer' });
    await good.waitFor();
    if ((await good.getAttribute('aria-pressed')) !== 'true') throw new Error('the vote is gone after a reload');
    await msg.getByRole('button', { name: 'Bad answer' }).click();
    await page.waitForFunction(() => [...document.querySelectorAll('.msg.assistant')].at(-1)
      .querySelector('[aria-label="Bad answer"]').getAttribute('aria-pressed') === 'true');
    await shot('07d-chat-feedback');
    return 'thumbs up survived a reload; thumbs down replaced it';
  });
  await page.unroute('**/api/v1/conversations/*/messages');
  await step('phone-sized viewport: no horizontal scrolling', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/movies?q=${encodeURIComponent(first().title.split(' ')[0])}`);
    await page.locator('.grid .card').first().waitFor();
    const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await shot('08-phone-search');
    await page.setViewportSize({ width: 1280, height: 860 });
    if (over > 1) throw new Error(`page is ${over} px wider than the viewport`);
  });
  await step('admin: the ops page shows training runs and drift reports', async () => {
    const [aemail, apw] = adminAccount();
    const dsn = ownerDsn();
    await page.goto(BASE + '/');
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('link', { name: 'Log in' }).first().click();
    await page.getByLabel('Email').fill(aemail);
    await page.getByLabel('Password').fill(apw);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('link', { name: 'Ops' }).click();
    await page.getByRole('heading', { level: 1, name: 'Operations' }).waitFor();
    const runs = page.locator('section[aria-labelledby="p-runs"]');
    const driftP = page.locator('section[aria-labelledby="p-drift"]');
    await runs.locator('tbody tr').first().waitFor({ timeout: 15000 });
    if (dsn && (await driftP.locator('tbody tr').count()) === 0) {
      // no report yet: `cinematch drift` compares this run's app ratings
      // with the training data and writes one
      execFileSync(BIN, ['drift', '--dsn', dsn], { stdio: 'ignore' });
      await page.reload();
    }
    await driftP.locator('tbody tr').first().waitFor({ timeout: 15000 });
    const nRuns = await runs.locator('tbody tr').count();
    const nDrift = await driftP.locator('tbody tr').count();
    const charts = await page.locator('section.panel svg[role="img"]').count();
    await page.getByRole('img', { name: /^PSI:/ }).waitFor();
    await shot('10-admin');
    await runs.screenshot({ path: join(SHOTS, '10b-admin-runs.png') });
    await driftP.screenshot({ path: join(SHOTS, '10c-admin-drift.png') });
    return `${nRuns} runs, ${nDrift} drift reports, ${charts} charts`;
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
  console.log(`${passed} passed, ${results.length - passed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(passed === results.length ? 0 : 1);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
