import { describe, expect, it, vi } from 'vitest';
import { ApiError, createClient, decodeJwt, parseMetrics } from './client.js';

const b64 = (o) => btoa(String.fromCharCode(...new TextEncoder().encode(JSON.stringify(o)))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const jwt = (claims) => `${b64({ alg: 'HS256' })}.${b64(claims)}.sig`;

function memStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k), m };
}

const json = (status, body, headers = {}) => new Response(body === undefined ? null : JSON.stringify(body),
  { status, headers: { 'Content-Type': 'application/json', ...headers } });

// A fake server: handlers keyed by "METHOD path"; records each request.
function fakeFetch(handlers) {
  const calls = [];
  const fn = vi.fn(async (url, init) => {
    const req = { url, method: init.method, headers: init.headers, body: init.body ? JSON.parse(init.body) : undefined };
    calls.push(req);
    const h = handlers[`${init.method} ${url.split('?')[0]}`];
    if (!h) return json(404, { error: { code: 'not_found', message: 'no such endpoint' } });
    return h(req, calls);
  });
  fn.calls = calls;
  return fn;
}

describe('API client', () => {
  it('sends the mail-link calls without credentials; forget() signs out locally only', async () => {
    const storage = memStorage();
    const f = fakeFetch({
      'POST /api/v1/auth/login': () => json(200, { access_token: jwt({ sub: '7' }), refresh_token: 'r1' }),
      'POST /api/v1/auth/verify-email': () => new Response(null, { status: 204 }),
      'POST /api/v1/auth/forgot-password': () => json(202, { message: 'on its way' }),
      'POST /api/v1/auth/reset-password': () => new Response(null, { status: 204 }),
    });
    const c = createClient({ fetchImpl: f, storage });
    await c.login('a@b.c', 'password1');
    expect(await c.verifyEmail('cmo_v')).toBeNull();
    expect(await c.forgotPassword('a@b.c')).toEqual({ message: 'on its way' });
    expect(await c.resetPassword('cmo_r', 'new password')).toBeNull();
    const [v, fp, rp] = f.calls.slice(1);
    expect([v.body, fp.body, rp.body]).toEqual([{ token: 'cmo_v' }, { email: 'a@b.c' }, { token: 'cmo_r', new_password: 'new password' }]);
    expect([v, fp, rp].map((r) => r.headers.Authorization)).toEqual([undefined, undefined, undefined]);
    c.forget();
    expect(c.signedIn).toBe(false);
    expect(storage.getItem('cinematch.refresh_token')).toBeNull();
    expect(f.calls.length).toBe(4);   // no logout call
  });

  it('keeps the access token in memory and the refresh token in session storage', async () => {
    const storage = memStorage();
    const f = fakeFetch({ 'POST /api/v1/auth/login': () => json(200, { access_token: jwt({ sub: '7', role: 'user' }), refresh_token: 'r1', token_type: 'Bearer', expires_in: 900 }) });
    const c = createClient({ fetchImpl: f, storage });
    const claims = await c.login('a@b.c', 'password1');
    expect(claims).toMatchObject({ sub: '7', role: 'user' });
    expect(storage.getItem('cinematch.refresh_token')).toBe('r1');
    expect([...storage.m.values()].join()).not.toContain(jwt({ sub: '7', role: 'user' }));
    expect(c.signedIn).toBe(true);
  });

  it('refreshes once on 401 and retries the request with the new token', async () => {
    const storage = memStorage();
    storage.setItem('cinematch.refresh_token', 'r1');
    const fresh = jwt({ sub: '7', role: 'user', n: 2 });
    const f = fakeFetch({
      'POST /api/v1/auth/refresh': (req) => (req.body.refresh_token === 'r1'
        ? json(200, { access_token: fresh, refresh_token: 'r2' }) : json(401, { error: { code: 'unauthenticated', message: 'spent' } })),
      'POST /api/v1/recommend': (req) => (req.headers.Authorization === `Bearer ${fresh}`
        ? json(200, { recommendations: [] }) : json(401, { error: { code: 'unauthenticated', message: 'expired' } })),
    });
    const c = createClient({ fetchImpl: f, storage });
    await expect(c.recommend({ k: 3 })).resolves.toEqual({ recommendations: [] });
    expect(f.calls.map((x) => x.url)).toEqual(['/api/v1/recommend', '/api/v1/auth/refresh', '/api/v1/recommend']);
    expect(storage.getItem('cinematch.refresh_token')).toBe('r2');
  });

  it('shares one refresh between concurrent 401s', async () => {
    const storage = memStorage();
    storage.setItem('cinematch.refresh_token', 'r1');
    const fresh = jwt({ sub: '1' });
    let refreshes = 0;
    const f = fakeFetch({
      'POST /api/v1/auth/refresh': async () => { refreshes++; await new Promise((r) => setTimeout(r, 5)); return json(200, { access_token: fresh, refresh_token: 'r2' }); },
      'GET /api/v1/auth/me': (req) => (req.headers.Authorization ? json(200, { user: { id: 1 } }) : json(401, { error: { code: 'unauthenticated', message: 'x' } })),
    });
    const c = createClient({ fetchImpl: f, storage });
    await Promise.all([c.me(), c.me(), c.me()]);
    expect(refreshes).toBe(1);
  });

  it('signs out when the refresh is refused, and reports the original 401', async () => {
    const storage = memStorage();
    storage.setItem('cinematch.refresh_token', 'spent');
    const f = fakeFetch({
      'POST /api/v1/auth/refresh': () => json(401, { error: { code: 'unauthenticated', message: 'revoked' } }),
      'GET /api/v1/ratings': () => json(401, { error: { code: 'unauthenticated', message: 'no token', request_id: 'rq1' } }),
    });
    const c = createClient({ fetchImpl: f, storage });
    const seen = [];
    c.onAuthChange((cl) => seen.push(cl));
    const err = await c.ratings().catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 401, code: 'unauthenticated', requestId: 'rq1' });
    expect(storage.getItem('cinematch.refresh_token')).toBeNull();
    expect(seen).toEqual([null]);
  });

  it('does not try to refresh for calls made without auth', async () => {
    const storage = memStorage();
    storage.setItem('cinematch.refresh_token', 'r1');
    const f = fakeFetch({ 'POST /api/v1/auth/login': () => json(401, { error: { code: 'unauthenticated', message: 'bad password' } }) });
    const c = createClient({ fetchImpl: f, storage });
    await expect(c.login('a@b.c', 'wrongpass')).rejects.toMatchObject({ status: 401 });
    expect(f.calls).toHaveLength(1);
  });

  it('turns error bodies into ApiError with fields, Retry-After and a missing flag for 404', async () => {
    const f = fakeFetch({
      'POST /api/v1/auth/register': () => json(422, { error: { code: 'validation_failed', message: 'bad', fields: { password: 'too short' } } }),
      'GET /api/v1/popular': () => json(429, { error: { code: 'rate_limited', message: 'slow down' } }, { 'Retry-After': '3' }),
    });
    const c = createClient({ fetchImpl: f, storage: null });
    await expect(c.register('a@b.c', 'x')).rejects.toMatchObject({ status: 422, fields: { password: 'too short' } });
    await expect(c.popular({ k: 5 })).rejects.toMatchObject({ status: 429, retryAfter: 3 });
    const e = await c.models().catch((x) => x);
    expect(e.missing).toBe(true);
  });

  it('builds query strings without empty parameters', async () => {
    const f = fakeFetch({ 'GET /api/v1/movies': () => json(200, { movies: [], total: 0 }) });
    const c = createClient({ fetchImpl: f, storage: null });
    await c.movies({ q: 'toy story', genre: '', year_min: 1990, offset: 0 });
    expect(f.calls[0].url).toBe('/api/v1/movies?q=toy+story&year_min=1990&offset=0');
  });

  it('streams chat tokens and resolves with the done event', async () => {
    const body = 'event: token\ndata: {"text":"Try "}\n\nevent: token\ndata: {"text":"Heat"}\n\nevent: done\ndata: {"message_id":9,"finish_reason":"stop"}\n\n';
    const f = fakeFetch({ 'POST /api/v1/conversations/4/messages': () => new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }) });
    const c = createClient({ fetchImpl: f, storage: null });
    const tokens = [];
    const done = await c.sendMessage(4, 'a heist film', { onToken: (t) => tokens.push(t) });
    expect(tokens.join('')).toBe('Try Heat');
    expect(done).toMatchObject({ message_id: 9, finish_reason: 'stop' });
    expect(f.calls[0].body).toMatchObject({ content: 'a heist film', stream: true });
    expect(f.calls[0].headers.Accept).toBe('text/event-stream');
  });

  it('cancels a conversation\'s generation with a bodiless POST; 409 is an ApiError', async () => {
    let running = true;
    const f = fakeFetch({ 'POST /api/v1/conversations/c%2F4/cancel': () => (running
      ? json(202, { conversation_id: 'c/4', cancelled: 1 })
      : json(409, { error: { code: 'conflict', message: 'no reply is being generated in this conversation' } })) });
    const c = createClient({ fetchImpl: f, storage: null });
    expect(await c.cancelConversation('c/4')).toEqual({ conversation_id: 'c/4', cancelled: 1 });
    expect(f.calls[0].body).toBeUndefined();
    running = false;
    await expect(c.cancelConversation('c/4')).rejects.toMatchObject({ status: 409, code: 'conflict' });
  });

  it('rejects a chat stream that ends in event: error', async () => {
    const body = 'event: token\ndata: {"text":"x"}\n\nevent: error\ndata: {"error":{"code":"unavailable","message":"model busy"}}\n\n';
    const f = fakeFetch({ 'POST /api/v1/conversations/1/messages': () => new Response(body, { headers: { 'Content-Type': 'text/event-stream' } }) });
    const c = createClient({ fetchImpl: f, storage: null });
    await expect(c.sendMessage(1, 'hi')).rejects.toMatchObject({ code: 'unavailable', message: 'model busy' });
  });

  it('streams an OpenAI-style completion until [DONE], with usage', async () => {
    const chunk = (o) => `data: ${JSON.stringify(o)}\n\n`;
    const body = chunk({ choices: [{ delta: { role: 'assistant', content: '' } }] })
      + chunk({ choices: [{ delta: { content: 'Alien' } }] })
      + chunk({ choices: [{ delta: { content: ' (1979)' }, finish_reason: 'stop' }] })
      + chunk({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 2 } }) + 'data: [DONE]\n\n';
    const f = fakeFetch({ 'POST /v1/chat/completions': () => new Response(body, { headers: { 'Content-Type': 'text/event-stream' } }) });
    const c = createClient({ fetchImpl: f, storage: null });
    const tokens = [];
    const r = await c.chatCompletion([{ role: 'user', content: 'space horror' }], { onToken: (t) => tokens.push(t) });
    expect(tokens).toEqual(['Alien', ' (1979)']);
    expect(r).toEqual({ finish_reason: 'stop', usage: { prompt_tokens: 5, completion_tokens: 2 } });
    expect(f.calls[0].body).toMatchObject({ model: 'dialog', stream: true, messages: [{ role: 'user', content: 'space horror' }] });
  });

  it('rejects a completion stream that carries an error object', async () => {
    const body = 'data: {"choices":[{"delta":{"content":""}}]}\n\ndata: {"error":{"code":"unavailable","message":"the generation failed"}}\n\ndata: [DONE]\n\n';
    const f = fakeFetch({ 'POST /v1/chat/completions': () => new Response(body, { headers: { 'Content-Type': 'text/event-stream' } }) });
    const c = createClient({ fetchImpl: f, storage: null });
    await expect(c.chatCompletion([{ role: 'user', content: 'x' }])).rejects.toMatchObject({ code: 'unavailable', message: 'the generation failed' });
  });

  it('decodes JWT payloads with UTF-8 and rejects garbage', () => {
    expect(decodeJwt(jwt({ sub: '1', name: 'Zoë' }))).toMatchObject({ name: 'Zoë' });
    expect(decodeJwt('not.a-jwt')).toBeNull();
  });

  it('parses Prometheus text with labels and skips comments', () => {
    const s = parseMetrics('# HELP x y\n# TYPE x counter\ncinematch_requests_total{route="/a",code="200"} 12\nup 1\nbad line\n');
    expect(s).toEqual([
      { name: 'cinematch_requests_total', labels: { route: '/a', code: '200' }, value: 12 },
      { name: 'up', labels: {}, value: 1 },
    ]);
  });
});
