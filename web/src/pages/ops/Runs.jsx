// Training runs: one chart per metric over time (each metric on its own
// scale: RMSE and NDCG do not share an axis), and the latest runs with
// params, metrics and the promotion gate's decision.
import { useState } from 'react';
import { LineChart } from '../../components/LineChart.jsx';
import { Panel, listIn, metricText, num, useLoad, when } from './shared.jsx';

// runs → [{name, points}] per numeric metric, oldest first (succeeded runs).
export function runSeries(runs, max = 4) {
  const ok = runs.filter((r) => r.status === 'succeeded' || r.status === undefined)
    .slice().sort((a, b) => new Date(a.started_at) - new Date(b.started_at));
  const keys = [];
  ok.forEach((r) => Object.entries(r.metrics || {}).forEach(([k, v]) => {
    if (typeof v === 'number' && !keys.includes(k)) keys.push(k);
  }));
  return keys.slice(0, max).map((k) => ({
    name: k,
    points: ok.filter((r) => typeof (r.metrics || {})[k] === 'number').map((r) => [new Date(r.started_at), r.metrics[k]]),
  }));
}

export function Runs({ api }) {
  const [model, setModel] = useState('');
  const load = useLoad(() => api.runs({ limit: 200, model: model || undefined }), [api, model]);
  return (
    <Panel title="Training runs" id="p-runs" load={load} what="Training runs"
      tools={(
        <label className="inline">Model{' '}
          <select value={model} onChange={(e) => setModel(e.target.value)}>
            <option value="">all</option><option value="recsys">recsys</option><option value="dialog">dialog</option>
          </select>
        </label>
      )}>
      {(d) => {
        const runs = listIn(d, 'runs');
        const series = runSeries(runs);
        return (
          <>
            <div className="charts">
              {series.map((s) => <LineChart key={s.name} title={`${s.name} over time`} series={[s]} />)}
            </div>
            {series.length === 0 ? <p className="note">No metrics recorded yet.</p> : null}
            <table>
              <thead><tr><th scope="col">run</th><th scope="col">model</th><th scope="col">status</th><th scope="col">trigger</th><th scope="col">started</th><th scope="col">params</th><th scope="col">metrics</th><th scope="col">gate</th></tr></thead>
              <tbody>{runs.slice(0, 25).map((r) => (
                <tr key={r.id}>
                  <td>{r.id}</td><td>{r.model_name}{r.model_version ? <span className="muted small"> v{r.model_version.version}</span> : null}</td>
                  <td><span className={`stage ${r.status}`}>{r.status}</span></td>
                  <td>{r.triggered_by || '–'}</td><td className="small">{when(r.started_at)}{r.duration_ms != null ? ` · ${num(r.duration_ms / 1000, 1)} s` : ''}</td>
                  <td className="small">{metricText(r.params, 5)}</td>
                  <td className="small">{metricText(r.metrics)}{r.error ? <span className="bad"> {r.error}</span> : null}</td>
                  <td className="small">{r.gate_decision ? <span title={r.gate_reason || ''}>{r.gate_decision}</span> : '–'}</td>
                </tr>
              ))}</tbody>
            </table>
            {d.next_cursor ? <p className="muted small">Showing the latest {runs.length} runs.</p> : null}
          </>
        );
      }}
    </Panel>
  );
}
