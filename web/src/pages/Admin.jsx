// The ops dashboard (admin): service state, the model registry, training
// runs, drift, ingestion and usage.  Each panel is its own file in ops/.
import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { parseMetrics } from '../api/client.js';
import { ErrorNote } from '../components/common.jsx';
import { listIn, num, useLoad } from './ops/shared.jsx';
import { Models } from './ops/Models.jsx';
import { Runs } from './ops/Runs.jsx';
import { Drift } from './ops/Drift.jsx';
import { Ingestions } from './ops/Ingestions.jsx';
import { Usage } from './ops/Usage.jsx';

export { listIn };

// /metrics summed by metric name (labels folded), the interesting ones first.
export function summarizeMetrics(samples) {
  const byName = new Map();
  for (const s of samples) {
    if (s.name.endsWith('_bucket')) continue;
    byName.set(s.name, (byName.get(s.name) || 0) + (Number.isFinite(s.value) ? s.value : 0));
  }
  return [...byName.entries()].map(([name, value]) => ({ name, value }));
}

function Service({ api }) {
  const ready = useLoad(() => api.ready(), [api]);
  const metrics = useLoad(() => api.metrics().then((t) => summarizeMetrics(parseMetrics(t))), [api]);
  const [filter, setFilter] = useState('cinematch_');
  const [reloaded, setReloaded] = useState(null);
  // POST /api/v1/admin/reload: every inference daemon reloads the
  // production versions (200 once they all did, 202 when one was slow)
  async function reload() {
    try {
      const r = await api.reload();
      const ds = (r && r.daemons) || [];
      setReloaded({ ok: true, text: r && r.status === 'reloaded'
        ? `Reloaded: ${ds.map((d) => (d.models || []).map((m) => `${m.name} ${m.version}`).join(', ')).filter(Boolean).join('; ') || 'no models'}`
        : 'Reload requested; a daemon has not answered yet.' });
      ready.reload();
    } catch (e) {
      setReloaded({ ok: false, text: e.missing ? 'Reload is not available on this server yet.' : e.message });
    }
  }
  useEffect(() => {
    const t = setInterval(() => { ready.reload(); metrics.reload(); }, 10000);
    return () => clearInterval(t);
  }, []); // eslint-disable-line react-hooks/exhaustive-deps
  const checks = ready.data && ready.data.body && ready.data.body.checks;
  return (
    <section className="panel" aria-labelledby="p-svc">
      <h2 id="p-svc">Service <button className="btn small" onClick={reload}>Reload models</button></h2>
      {reloaded ? <p className={reloaded.ok ? 'note' : 'error'} role={reloaded.ok ? 'status' : 'alert'}>{reloaded.text}</p> : null}
      {ready.data ? (
        <p>/ready: <strong className={ready.data.status === 200 ? 'good' : 'bad'}>{ready.data.status === 200 ? 'ready' : `not ready (${ready.data.status})`}</strong></p>
      ) : <ErrorNote error={ready.error} what="/ready" />}
      {checks ? (
        <ul className="checks">{Object.entries(checks).map(([k, v]) => (
          <li key={k}><strong>{k}</strong>: {typeof v === 'object' ? (v.status || '') + (v.models ? ` ${v.models.map((m) => `${m.name} ${m.version}`).join(', ')}` : '') : String(v)}</li>
        ))}</ul>
      ) : null}
      <h3>Live metrics <span className="muted small">(/metrics, every 10 s)</span></h3>
      {metrics.error ? <p className="note" role="status">/metrics is not reachable from this browser (it is restricted to the monitoring hosts).</p> : null}
      {metrics.data ? (
        <>
          <label className="inline">Filter <input value={filter} onChange={(e) => setFilter(e.target.value)} /></label>
          <table className="metrics">
            <tbody>{metrics.data.filter((m) => m.name.includes(filter)).slice(0, 60).map((m) => (
              <tr key={m.name}><th scope="row">{m.name}</th><td>{num(m.value, 3)}</td></tr>
            ))}</tbody>
          </table>
        </>
      ) : null}
    </section>
  );
}

export function AdminPage() {
  const { api, user, isAdmin } = useAuth();
  if (!user) return <p className="note">Log in as an administrator to see operations.</p>;
  return (
    <div className="admin">
      <h1>Operations</h1>
      {!isAdmin ? <p className="note" role="status">You are not an administrator: the panels below will be refused.</p> : null}
      <Service api={api} />
      <Models api={api} />
      <Runs api={api} />
      <Drift api={api} />
      <Ingestions api={api} />
      <Usage api={api} />
    </div>
  );
}
