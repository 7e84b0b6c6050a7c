import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { parseMetrics } from '../api/client.js';
import { ErrorNote, Spinner } from '../components/common.jsx';
import { LineChart } from '../components/LineChart.jsx';

// Responses are objects holding one list ({runs:[…]}, {reports:[…]}, …): take
// the named one, else the first array found, else the value itself if a list.
export function listIn(r, ...keys) {
  if (Array.isArray(r)) return r;
  if (!r || typeof r !== 'object') return [];
  for (const k of keys) if (Array.isArray(r[k])) return r[k];
  const first = Object.values(r).find(Array.isArray);
  return first || [];
}

const when = (t) => (t ? new Date(t).toLocaleString() : '–');
const num = (v, d = 4) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : v ?? '–');

function useLoad(fn, deps) {
  const [state, set] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    set((s) => ({ ...s, loading: true }));
    fn().then((data) => live && set({ data, error: null, loading: false }),
      (error) => live && set({ data: null, error, loading: false }));
    return () => { live = false; };
  }, [...deps, tick]); // eslint-disable-line react-hooks/exhaustive-deps
  return { ...state, reload: () => setTick((t) => t + 1) };
}

function Panel({ title, id, load, what, children }) {
  return (
    <section className="panel" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      <ErrorNote error={load.error} what={what} />
      {load.loading && !load.data ? <Spinner /> : null}
      {load.data ? children(load.data) : null}
    </section>
  );
}

function Models({ api }) {
  const load = useLoad(() => api.models(), [api]);
  const [msg, setMsg] = useState(null);
  async function stage(name, version, s) {
    if (!window.confirm(`Move ${name} ${version} to ${s}?`)) return;
    try { await api.stage(name, version, s); setMsg(`${name} ${version} → ${s}`); load.reload(); }
    catch (e) { setMsg(e.message); }
  }
  return (
    <Panel title="Models and versions" id="p-models" load={load} what="The model registry">
      {(d) => (
        <>
          {msg ? <p className="note" role="status">{msg}</p> : null}
          {listIn(d, 'models').map((m) => (
            <div key={m.name} className="model">
              <h3>{m.name} <span className="muted small">{m.task || ''}</span></h3>
              <table>
                <thead><tr><th scope="col">version</th><th scope="col">stage</th><th scope="col">metrics</th><th scope="col">created</th><th scope="col"><span className="sr-only">actions</span></th></tr></thead>
                <tbody>
                  {listIn(m.versions, 'versions').map((v) => (
                    <tr key={v.version}>
                      <td>{v.version}</td>
                      <td><span className={`stage ${v.stage}`}>{v.stage}</span></td>
                      <td className="small">{Object.entries(v.metrics || {}).slice(0, 4).map(([k, x]) => `${k} ${num(x)}`).join(' · ')}</td>
                      <td className="small">{when(v.created_at)}</td>
                      <td>
                        {v.stage !== 'production' ? <button className="btn small" onClick={() => stage(m.name, v.version, 'production')}>Promote</button> : null}
                        {v.stage === 'production' ? <button className="btn small" onClick={() => stage(m.name, v.version, 'archived')}>Archive</button> : null}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ))}
        </>
      )}
    </Panel>
  );
}

function Runs({ api }) {
  const load = useLoad(() => api.runs(), [api]);
  return (
    <Panel title="Training runs" id="p-runs" load={load} what="Training runs">
      {(d) => {
        const runs = listIn(d, 'runs').slice().sort((a, b) => new Date(a.started_at) - new Date(b.started_at));
        const keys = new Set();
        runs.forEach((r) => Object.entries(r.metrics || {}).forEach(([k, v]) => typeof v === 'number' && keys.add(k)));
        const series = [...keys].slice(0, 4).map((k) => ({
          name: k,
          points: runs.filter((r) => typeof (r.metrics || {})[k] === 'number').map((r) => [new Date(r.started_at), r.metrics[k]]),
        }));
        return (
          <>
            <LineChart title="Run metrics over time" series={series} />
            <table>
              <thead><tr><th scope="col">run</th><th scope="col">model</th><th scope="col">status</th><th scope="col">trigger</th><th scope="col">started</th><th scope="col">metrics</th></tr></thead>
              <tbody>{runs.slice(-20).reverse().map((r) => (
                <tr key={r.id}><td>{r.id}</td><td>{r.model_name}</td><td><span className={`stage ${r.status}`}>{r.status}</span></td>
                  <td>{r.triggered_by || '–'}</td><td className="small">{when(r.started_at)}</td>
                  <td className="small">{Object.entries(r.metrics || {}).slice(0, 4).map(([k, x]) => `${k} ${num(x)}`).join(' · ')}{r.error ? ` ${r.error}` : ''}</td></tr>
              ))}</tbody>
            </table>
          </>
        );
      }}
    </Panel>
  );
}

function Drift({ api }) {
  const load = useLoad(() => api.drift(), [api]);
  return (
    <Panel title="Drift" id="p-drift" load={load} what="Drift reports">
      {(d) => {
        const reps = listIn(d, 'reports', 'drift_reports').slice().sort((a, b) => new Date(a.created_at) - new Date(b.created_at));
        const pts = (k) => reps.filter((r) => typeof r[k] === 'number').map((r) => [new Date(r.created_at), r[k]]);
        return (
          <>
            <div className="charts">
              <LineChart title="PSI" series={[{ name: 'psi', points: pts('psi') }]}
                thresholds={[{ value: 0.1, label: 'moderate 0.1' }, { value: 0.25, label: 'significant 0.25' }]} />
              <LineChart title="KS statistic" series={[{ name: 'ks', points: pts('ks_statistic') }]} />
            </div>
            <table>
              <thead><tr><th scope="col">report</th><th scope="col">when</th><th scope="col">KS (p)</th><th scope="col">PSI</th><th scope="col">mean base→now</th><th scope="col">drift</th></tr></thead>
              <tbody>{reps.slice(-15).reverse().map((r) => (
                <tr key={r.id}><td>{r.id}</td><td className="small">{when(r.created_at)}</td>
                  <td>{num(r.ks_statistic)} ({num(r.ks_pvalue, 3)})</td><td>{num(r.psi)} <span className="muted small">{r.psi_band || ''}</span></td>
                  <td>{num(r.mean_baseline, 3)} → {num(r.mean_current, 3)}</td>
                  <td>{r.drift_detected ? <strong className="bad">yes</strong> : 'no'}</td></tr>
              ))}</tbody>
            </table>
          </>
        );
      }}
    </Panel>
  );
}

function Ingestions({ api }) {
  const load = useLoad(() => api.ingestions(), [api]);
  return (
    <Panel title="Ingestion batches" id="p-ingest" load={load} what="Ingestion history">
      {(d) => (
        <table>
          <thead><tr><th scope="col">batch</th><th scope="col">file</th><th scope="col">status</th><th scope="col">rows</th><th scope="col">accepted</th><th scope="col">rejected</th><th scope="col">started</th></tr></thead>
          <tbody>{listIn(d, 'batches', 'ingestions').slice(0, 20).map((b) => (
            <tr key={b.id}><td>{b.id}</td><td className="small">{b.file_name}</td><td><span className={`stage ${b.status}`}>{b.status}</span></td>
              <td>{num(b.rows_total)}</td><td>{num(b.rows_accepted)}</td>
              <td className={b.rows_rejected ? 'bad' : ''}>{num(b.rows_rejected)}</td><td className="small">{when(b.started_at)}</td></tr>
          ))}</tbody>
        </table>
      )}
    </Panel>
  );
}

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
  useEffect(() => {
    const t = setInterval(() => { ready.reload(); metrics.reload(); }, 10000);
    return () => clearInterval(t);
  }, []); // eslint-disable-line react-hooks/exhaustive-deps
  const checks = ready.data && ready.data.body && ready.data.body.checks;
  return (
    <section className="panel" aria-labelledby="p-svc">
      <h2 id="p-svc">Service</h2>
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
    </div>
  );
}
