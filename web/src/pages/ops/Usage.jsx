// Usage analytics: requests, errors, generations and tokens per user, API
// key or model over a time range (GET /api/v1/admin/usage), as a table and,
// with buckets, as requests-over-time lines for the busiest groups.
import { useState } from 'react';
import { LineChart } from '../../components/LineChart.jsx';
import { Panel, errorText, num, useLoad } from './shared.jsx';

const DAY = 86400000;
const isoDay = (t) => new Date(t).toISOString().slice(0, 10);

// rows (with buckets) → one series per group of its requests, top n groups.
export function usageSeries(rows, n = 5) {
  const by = new Map();
  for (const r of rows) {
    if (!r.bucket) continue;
    const k = r.label || r.key || '(none)';
    if (!by.has(k)) by.set(k, []);
    by.get(k).push([new Date(r.bucket), r.requests]);
  }
  return [...by.entries()].map(([name, points]) => ({ name, points, total: points.reduce((s, p) => s + p[1], 0) }))
    .sort((a, b) => b.total - a.total).slice(0, n).map(({ name, points }) => ({ name, points }));
}

// Rows summed per group (when bucketed), busiest first.
export function usageTable(rows) {
  const by = new Map();
  for (const r of rows) {
    const k = r.key ?? null;
    const t = by.get(k) || { key: k, label: r.label, requests: 0, errors: 0, server_errors: 0, generations: 0, prompt_tokens: 0, completion_tokens: 0, tokens: 0 };
    for (const f of ['requests', 'errors', 'server_errors', 'generations', 'prompt_tokens', 'completion_tokens', 'tokens']) t[f] += r[f] || 0;
    by.set(k, t);
  }
  return [...by.values()].sort((a, b) => b.requests - a.requests || b.tokens - a.tokens);
}

const NONE = { user: 'anonymous', api_key: 'no key (session)', model: 'no model' };

export function Usage({ api, now = Date.now }) {
  const [form, setForm] = useState(() => ({ from: isoDay(now() - 7 * DAY), to: isoDay(now() + DAY), group_by: 'user', interval: 'day' }));
  const [query, setQuery] = useState(form);
  const load = useLoad(() => api.usage({ ...query, interval: query.interval || undefined }), [api, query]);
  const set = (k) => (e) => setForm((f) => ({ ...f, [k]: e.target.value }));
  return (
    <Panel title="Usage" id="p-usage" load={{ ...load, error: null }} what="Usage analytics"
      tools={(
        <form className="usage-form" onSubmit={(e) => { e.preventDefault(); setQuery(form); }}>
          <label className="inline">From <input type="date" value={form.from} onChange={set('from')} /></label>
          <label className="inline">To <input type="date" value={form.to} onChange={set('to')} /></label>
          <label className="inline">Per{' '}
            <select value={form.group_by} onChange={set('group_by')}>
              <option value="user">user</option><option value="api_key">API key</option><option value="model">model</option>
            </select>
          </label>
          <label className="inline">Buckets{' '}
            <select value={form.interval} onChange={set('interval')}>
              <option value="">none</option><option value="hour">hour</option><option value="day">day</option>
            </select>
          </label>
          <button className="btn small" type="submit">Show</button>
          {load.error ? <p className="error" role="alert">{load.error.missing ? 'Usage analytics is not available on this server yet.' : errorText(load.error)}</p> : null}
        </form>
      )}>
      {(d) => {
        const rows = Array.isArray(d.rows) ? d.rows : [];
        const table = usageTable(rows);
        const series = usageSeries(rows);
        const t = d.totals || {};
        return (
          <>
            <p className="small">
              Total: <strong>{num(t.requests)}</strong> requests, <strong>{num(t.errors)}</strong> errors
              ({num(t.server_errors)} server), <strong>{num(t.generations)}</strong> generations,{' '}
              <strong>{num(t.tokens)}</strong> tokens
              {typeof d.groups === 'number' && d.groups > table.length ? ` · the ${table.length} busiest of ${d.groups}` : ''}
            </p>
            {series.length ? <LineChart title={`Requests per ${d.interval || 'bucket'}`} series={series} /> : null}
            <table>
              <thead><tr><th scope="col">{d.group_by === 'api_key' ? 'API key' : d.group_by || 'group'}</th><th scope="col">requests</th><th scope="col">errors</th><th scope="col">5xx</th><th scope="col">generations</th><th scope="col">prompt tokens</th><th scope="col">completion tokens</th></tr></thead>
              <tbody>{table.map((r) => (
                <tr key={String(r.key)}>
                  <th scope="row">{r.label || r.key || <span className="muted">{NONE[d.group_by] || '–'}</span>}</th>
                  <td>{num(r.requests)}</td><td className={r.errors ? 'bad' : ''}>{num(r.errors)}</td><td>{num(r.server_errors)}</td>
                  <td>{num(r.generations)}</td><td>{num(r.prompt_tokens)}</td><td>{num(r.completion_tokens)}</td>
                </tr>
              ))}</tbody>
            </table>
            {table.length === 0 ? <p className="note">No requests in this range.</p> : null}
          </>
        );
      }}
    </Panel>
  );
}
