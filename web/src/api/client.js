// The cinematch API client (contract: shared/API.md).
//
// Tokens: the access token lives only in memory; the refresh token is kept in
// sessionStorage so a reload of the tab keeps the session while closing the
// tab ends it.  A 401 on an authenticated call triggers one refresh (shared by
// every call that is waiting) and one retry; a refresh that fails signs out.
import { readSse } from './sse.js';

const REFRESH_KEY = 'cinematch.refresh_token';

export class ApiError extends Error {
  constructor(status, code, message, { fields, requestId, retryAfter } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
  // The endpoint is not on this server (yet): the UI says so instead of failing.
  get missing() { return this.status === 404 || this.status === 405 || this.status === 501; }
}

export function decodeJwt(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const pad = b64 + '==='.slice((b64.length + 3) % 4);
    const json = decodeURIComponent(
      Array.from(atob(pad), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

async function toError(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const e = (body && body.error) || {};
  const ra = res.headers.get('Retry-After');
  return new ApiError(res.status, e.code || `http_${res.status}`,
    e.message || `${res.status} ${res.statusText || 'error'}`,
    { fields: e.fields, requestId: e.request_id || res.headers.get('X-Request-ID'),
      retryAfter: ra ? Number(ra) : undefined });
}

function safeStorage(storage) {
  if (storage !== undefined) return storage;
  try { return globalThis.sessionStorage || null; } catch { return null; }
}

export function createClient({ baseUrl = '', fetchImpl, storage } = {}) {
  const doFetch = fetchImpl || ((...a) => globalThis.fetch(...a));
  const store = safeStorage(storage);
  let access = null;
  let refreshing = null;
  const listeners = new Set();

  const readRefresh = () => (store ? store.getItem(REFRESH_KEY) : null);
  function setTokens(pair) {
    access = pair ? pair.access_token : null;
    if (store) {
      if (pair && pair.refresh_token) store.setItem(REFRESH_KEY, pair.refresh_token);
      else if (!pair) store.removeItem(REFRESH_KEY);
    }
    const claims = access ? decodeJwt(access) : null;
    listeners.forEach((fn) => fn(claims));
  }

  async function send(method, path, { body, auth = true, signal, headers = {} } = {}) {
    const h = { Accept: 'application/json', ...headers };
    if (body !== undefined) h['Content-Type'] = 'application/json';
    if (auth && access) h.Authorization = `Bearer ${access}`;
    return doFetch(baseUrl + path, {
      method, headers: h, signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  // One refresh at a time; every caller that got a 401 meanwhile waits on it.
  function refresh() {
    if (refreshing) return refreshing;
    const rt = readRefresh();
    if (!rt) return Promise.resolve(false);
    refreshing = (async () => {
      try {
        const res = await send('POST', '/api/v1/auth/refresh',
          { body: { refresh_token: rt }, auth: false });
        if (!res.ok) { setTokens(null); return false; }
        setTokens(await res.json());
        return true;
      } catch {
        return false; // network trouble: keep the refresh token for later
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  async function raw(method, path, opts = {}) {
    let res = await send(method, path, opts);
    if (res.status === 401 && opts.auth !== false && readRefresh()) {
      if (await refresh()) res = await send(method, path, opts);
    }
    if (!res.ok) throw await toError(res);
    return res;
  }

  async function call(method, path, opts) {
    const res = await raw(method, path, opts);
    if (res.status === 204) return null;
    const type = res.headers.get('Content-Type') || '';
    return type.includes('json') ? res.json() : res.text();
  }

  const qs = (params) => {
    const p = new URLSearchParams();
    Object.entries(params || {}).forEach(([k, v]) => {
      if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
    });
    const s = p.toString();
    return s ? `?${s}` : '';
  };

  return {
    get claims() { return access ? decodeJwt(access) : null; },
    get signedIn() { return access !== null; },
    onAuthChange(fn) { listeners.add(fn); return () => listeners.delete(fn); },
    refresh,
    raw,
    call,
    // Restore a session after a reload from the stored refresh token.
    async restore() { return access ? true : refresh(); },

    // auth
    register: (email, password, display_name) => call('POST', '/api/v1/auth/register',
      { body: { email, password, ...(display_name ? { display_name } : {}) }, auth: false }),
    async login(email, password) {
      const pair = await call('POST', '/api/v1/auth/login',
        { body: { email, password }, auth: false });
      setTokens(pair);
      return decodeJwt(pair.access_token);
    },
    async logout() {
      try { if (access) await call('POST', '/api/v1/auth/logout'); }
      catch { /* signed out locally whatever the server says */ }
      finally { setTokens(null); }
    },
    me: () => call('GET', '/api/v1/auth/me'),
    // the links of the mails (cinematch mailer): one-time cmo_ tokens
    verifyEmail: (token) => call('POST', '/api/v1/auth/verify-email', { body: { token }, auth: false }),
    forgotPassword: (email) => call('POST', '/api/v1/auth/forgot-password', { body: { email }, auth: false }),
    resetPassword: (token, new_password) => call('POST', '/api/v1/auth/reset-password',
      { body: { token, new_password }, auth: false }),
    // Signed out here without telling the server (a password reset already
    // revoked every session there).
    forget() { setTokens(null); },
    keys: () => call('GET', '/api/v1/keys'),
    createKey: (name) => call('POST', '/api/v1/keys', { body: { name } }),
    deleteKey: (id) => call('DELETE', `/api/v1/keys/${encodeURIComponent(id)}`),

    // movies
    movies: (q, opts) => call('GET', `/api/v1/movies${qs(q)}`, opts),
    movie: (id, opts) => call('GET', `/api/v1/movies/${encodeURIComponent(id)}`, opts),
    rate: (id, rating) => call('PUT', `/api/v1/ratings/${encodeURIComponent(id)}`, { body: { rating } }),
    ratings: () => call('GET', '/api/v1/ratings'),
    recommend: (body) => call('POST', '/api/v1/recommend', { body }),
    similar: (movie_id, k = 10) => call('POST', '/api/v1/similar', { body: { movie_id, k } }),
    popular: (q) => call('GET', `/api/v1/popular${qs(q)}`),

    // chat
    conversations: (q) => call('GET', `/api/v1/conversations${qs(q)}`),
    conversation: (id) => call('GET', `/api/v1/conversations/${encodeURIComponent(id)}`),
    createConversation: (title) => call('POST', '/api/v1/conversations', { body: title ? { title } : {} }),
    renameConversation: (id, title) => call('PATCH', `/api/v1/conversations/${encodeURIComponent(id)}`, { body: { title } }),
    deleteConversation: (id) => call('DELETE', `/api/v1/conversations/${encodeURIComponent(id)}`),
    // Stops the reply being generated in the conversation, on whichever
    // server worker streams it (409 when nothing is being generated).
    cancelConversation: (id) => call('POST', `/api/v1/conversations/${encodeURIComponent(id)}/cancel`),
    feedback: (messageId, rating) => call('POST', `/api/v1/messages/${encodeURIComponent(messageId)}/feedback`, { body: { rating } }),
    exportUrl: (id, format) => `${baseUrl}/api/v1/conversations/${encodeURIComponent(id)}/export?format=${format}`,
    async exportConversation(id, format) {
      const res = await raw('GET', `/api/v1/conversations/${encodeURIComponent(id)}/export?format=${format}`);
      return res.blob();
    },
    // Streams the reply: onToken(text) per `event: token`; resolves with the
    // `done` payload; rejects with ApiError on `event: error`, AbortError on stop.
    async sendMessage(id, content, { signal, onToken, params = {} } = {}) {
      const res = await raw('POST', `/api/v1/conversations/${encodeURIComponent(id)}/messages`,
        { body: { content, stream: true, ...params }, signal, headers: { Accept: 'text/event-stream' } });
      const type = res.headers.get('Content-Type') || '';
      if (!type.includes('text/event-stream')) {
        const m = await res.json(); // stream=false style answer
        if (onToken && m && m.content) onToken(m.content);
        return { message_id: m && (m.id || m.message_id), finish_reason: 'stop' };
      }
      let done = null;
      let failure = null;
      await readSse(res.body, (ev) => {
        let payload = null;
        try { payload = JSON.parse(ev.data); } catch { payload = { text: ev.data }; }
        if (ev.event === 'token') { if (onToken) onToken(payload.text || ''); }
        else if (ev.event === 'done') done = payload;
        else if (ev.event === 'error') {
          const e = payload.error || payload;
          failure = new ApiError(0, e.code || 'stream_error', e.message || 'generation failed');
        }
      }, signal);
      if (failure) throw failure;
      return done || { finish_reason: 'eof' };
    },

    // OpenAI-compatible streaming completion (POST /v1/chat/completions): the
    // chat page's fallback while the conversation API is not on the server.
    // messages: [{role, content}]; onToken per delta; resolves {finish_reason, usage}.
    async chatCompletion(messages, { signal, onToken, model = 'dialog', params = {} } = {}) {
      const res = await raw('POST', '/v1/chat/completions', {
        body: { model, messages, stream: true, stream_options: { include_usage: true }, ...params },
        signal, headers: { Accept: 'text/event-stream' },
      });
      let finish = null;
      let usage = null;
      let failure = null;
      await readSse(res.body, (ev) => {
        if (ev.data === '[DONE]') return;
        let chunk;
        try { chunk = JSON.parse(ev.data); } catch { return; }
        if (chunk.error) {
          failure = new ApiError(0, chunk.error.code || 'stream_error', chunk.error.message || 'generation failed');
          return;
        }
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        if (choice.delta && choice.delta.content && onToken) onToken(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }, signal);
      if (failure) throw failure;
      return { finish_reason: finish || 'eof', usage };
    },

    // operations
    models: () => call('GET', '/api/v1/models'),
    versions: (name) => call('GET', `/api/v1/models/${encodeURIComponent(name)}/versions`),
    stage: (name, v, stage) => call('POST', `/api/v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(v)}/stage`, { body: { stage } }),
    // admin views: q = {limit, cursor, ...filters}; each answer has next_cursor
    runs: (q) => call('GET', `/api/v1/admin/runs${qs(q)}`),
    drift: (q) => call('GET', `/api/v1/admin/drift${qs(q)}`),
    ingestions: (q) => call('GET', `/api/v1/admin/ingestions${qs(q)}`),
    ingestion: (id, q) => call('GET', `/api/v1/admin/ingestions/${encodeURIComponent(id)}${qs(q)}`),
    // q = {from, to, group_by: user|api_key|model, interval: hour|day, limit}
    usage: (q) => call('GET', `/api/v1/admin/usage${qs(q)}`),
    reload: () => call('POST', '/api/v1/admin/reload'),
    async ready() {
      const res = await send('GET', '/ready', { auth: false });
      let body = null;
      try { body = await res.json(); } catch { /* not JSON */ }
      return { status: res.status, body };
    },
    health: () => call('GET', '/health', { auth: false }),
    async metrics() {
      const res = await send('GET', '/metrics', { auth: true, headers: { Accept: 'text/plain' } });
      if (!res.ok) throw await toError(res);
      return res.text();
    },
  };
}

// Prometheus text format → [{name, labels, value}] (comments and bad lines skipped).
export function parseMetrics(text) {
  const out = [];
  const re = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/;
  for (const l of text.split('\n')) {
    if (!l || l[0] === '#') continue;
    const m = re.exec(l);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    const v = Number(m[4]);
    if (!Number.isNaN(v) || m[4] === 'NaN') out.push({ name: m[1], labels, value: v });
  }
  return out;
}

export const api = createClient();
