// The registry: every model with its versions, stages and metrics; promote a
// version, send one to staging or archive it, roll back to the version that
// was production before.  Stage changes go through
// POST /api/v1/models/{name}/versions/{v}/stage (the same SQL as the CLI).
import { useState } from 'react';
import { ErrorNote, Spinner } from '../../components/common.jsx';
import { Panel, errorText, listIn, metricText, num, useLoad, when } from './shared.jsx';

// GET /api/v1/models/{name}/versions: each version with the training run
// that made it (params, data size, duration, the promotion gate's decision).
function VersionRuns({ api, name }) {
  const load = useLoad(() => api.versions(name), [api, name]);
  if (load.error) return <ErrorNote error={load.error} what="Version history" />;
  if (!load.data) return <Spinner />;
  return (
    <table className="runs-of" aria-label={`Training runs of ${name}`}>
      <thead><tr><th scope="col">version</th><th scope="col">run</th><th scope="col">params</th><th scope="col">rows (train / test)</th><th scope="col">took</th><th scope="col">gate</th></tr></thead>
      <tbody>{listIn(load.data, 'versions').map((v) => (
        <tr key={v.version}>
          <td>{v.version}</td>
          {v.run ? (
            <>
              <td>{v.run.id} <span className="muted small">{v.run.triggered_by}</span></td>
              <td className="small">{metricText(v.run.params, 6)}</td>
              <td className="small">{num(v.run.train_rows)} / {num(v.run.test_rows)}</td>
              <td className="small">{v.run.duration_ms != null ? `${num(v.run.duration_ms / 1000, 1)} s` : '–'}</td>
              <td className="small">{v.run.gate_decision || '–'}{v.run.gate_reason ? `: ${v.run.gate_reason}` : ''}</td>
            </>
          ) : <td colSpan={5} className="muted small">registered by hand (no training run)</td>}
        </tr>
      ))}</tbody>
    </table>
  );
}

export function Models({ api }) {
  const load = useLoad(() => api.models(), [api]);
  const [msg, setMsg] = useState(null);
  const [open, setOpen] = useState(null);
  async function stage(name, version, s, verb) {
    if (!window.confirm(`${verb} ${name} version ${version}?`)) return;
    try {
      const r = await api.stage(name, version, s);
      const extra = r && r.archived_version ? ` (version ${r.archived_version} archived)` : '';
      setMsg({ ok: true, text: r && r.changed === false ? `${name} ${version} was already ${s}` : `${name} ${version} → ${s}${extra}` });
      load.reload();
    } catch (e) {
      setMsg({ ok: false, text: errorText(e) });
    }
  }
  return (
    <Panel title="Models and versions" id="p-models" load={load} what="The model registry">
      {(d) => (
        <>
          {msg ? <p className={msg.ok ? 'note' : 'error'} role={msg.ok ? 'status' : 'alert'}>{msg.text}</p> : null}
          {listIn(d, 'models').map((m) => (
            <div key={m.name} className="model">
              <h3>
                {m.name} <span className="muted small">{m.task || ''}{m.private ? ' · private' : ''}</span>
                {m.rollback_version ? (
                  <button className="btn small" onClick={() => stage(m.name, m.rollback_version, 'production', 'Roll back to')}>
                    Roll back to {m.rollback_version}
                  </button>
                ) : null}
                {listIn(m.versions, 'versions').length ? (
                  <button className="btn small" aria-expanded={open === m.name} onClick={() => setOpen(open === m.name ? null : m.name)}>
                    {open === m.name ? 'Hide runs' : 'Runs'}
                  </button>
                ) : null}
              </h3>
              {open === m.name ? <VersionRuns api={api} name={m.name} /> : null}
              {listIn(m.versions, 'versions').length === 0 ? <p className="muted small">No versions registered.</p> : (
                <table>
                  <thead><tr><th scope="col">version</th><th scope="col">stage</th><th scope="col">metrics</th><th scope="col">created</th><th scope="col"><span className="sr-only">actions</span></th></tr></thead>
                  <tbody>
                    {listIn(m.versions, 'versions').map((v) => (
                      <tr key={v.version}>
                        <td>{v.version}</td>
                        <td><span className={`stage ${v.stage}`}>{v.stage}</span></td>
                        <td className="small">{metricText(v.metrics)}</td>
                        <td className="small">{when(v.created_at)}</td>
                        <td>
                          {/* production leaves only when another version is promoted */}
                          {v.stage !== 'production' ? <button className="btn small" onClick={() => stage(m.name, v.version, 'production', 'Promote')}>Promote</button> : null}
                          {v.stage === 'none' || v.stage === 'archived' ? <button className="btn small" onClick={() => stage(m.name, v.version, 'staging', 'Stage')}>Stage</button> : null}
                          {v.stage === 'none' || v.stage === 'staging' ? <button className="btn small" onClick={() => stage(m.name, v.version, 'archived', 'Archive')}>Archive</button> : null}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </div>
          ))}
        </>
      )}
    </Panel>
  );
}
