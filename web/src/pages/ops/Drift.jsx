// Drift reports: PSI against its bands, KS p-value against the alert level,
// mean and std shift; thresholds come from the reports (what the drift
// daemon was configured with), the standard PSI bands otherwise.
import { LineChart } from '../../components/LineChart.jsx';
import { Panel, listIn, num, useLoad, when } from './shared.jsx';

const PSI_BANDS = [{ value: 0.1, label: 'moderate 0.1' }, { value: 0.25, label: 'significant 0.25' }];

// The newest report's thresholds: {psi: 0.25, ks_pvalue: 0.01, ...}.
export function driftThresholds(reports) {
  const t = (reports.find((r) => r.thresholds && Object.keys(r.thresholds).length) || {}).thresholds || {};
  const psi = typeof t.psi === 'number' && t.psi !== 0.1 && t.psi !== 0.25
    ? [...PSI_BANDS, { value: t.psi, label: `alert ${t.psi}` }] : PSI_BANDS;
  const p = t.ks_pvalue ?? t.ks_alpha ?? t.alpha;
  return { psi, ks: typeof p === 'number' ? [{ value: p, label: `alert p < ${p}` }] : [] };
}

export function Drift({ api }) {
  const load = useLoad(() => api.drift({ limit: 200 }), [api]);
  return (
    <Panel title="Drift" id="p-drift" load={load} what="Drift reports">
      {(d) => {
        const reports = listIn(d, 'reports', 'drift_reports');
        const asc = reports.slice().sort((a, b) => new Date(a.created_at) - new Date(b.created_at));
        const pts = (k) => asc.filter((r) => typeof r[k] === 'number').map((r) => [new Date(r.created_at), r[k]]);
        const th = driftThresholds(reports);
        const alerted = (r) => r.alert ?? r.drift_detected;
        return (
          <>
            <div className="charts">
              <LineChart title="PSI" series={[{ name: 'psi', points: pts('psi') }]} thresholds={th.psi} />
              <LineChart title="KS p-value" series={[{ name: 'p', points: pts('ks_pvalue') }]} thresholds={th.ks} />
              <LineChart title="Mean rating (baseline, current)" series={[
                { name: 'baseline', points: pts('mean_baseline') }, { name: 'current', points: pts('mean_current') }]} />
            </div>
            <table>
              <thead><tr><th scope="col">report</th><th scope="col">when</th><th scope="col">rows</th><th scope="col">KS (p)</th><th scope="col">PSI</th><th scope="col">mean base→now</th><th scope="col">new items</th><th scope="col">alert</th></tr></thead>
              <tbody>{reports.slice(0, 15).map((r) => (
                <tr key={r.id}>
                  <td>{r.id}</td><td className="small">{when(r.created_at)}</td>
                  <td className="small">{num(r.baseline_rows)} / {num(r.current_rows)}</td>
                  <td>{num(r.ks_statistic)} ({num(r.ks_pvalue, 3)})</td>
                  <td>{num(r.psi)} <span className="muted small">{r.psi_band || ''}</span></td>
                  <td>{num(r.mean_baseline, 3)} → {num(r.mean_current, 3)}</td>
                  <td>{typeof r.new_item_share === 'number' ? `${num(r.new_item_share * 100, 1)} %` : '–'}</td>
                  <td>{alerted(r) ? <strong className="bad">yes{Array.isArray(r.reasons) && r.reasons.length ? `: ${r.reasons.join(', ')}` : ''}</strong> : 'no'}</td>
                </tr>
              ))}</tbody>
            </table>
          </>
        );
      }}
    </Panel>
  );
}
