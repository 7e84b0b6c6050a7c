// Ingestion batches with accepted / rejected counts; a batch's rejected lines
// (line number, raw text, reason) open below it, paged with the cursor.
import { useEffect, useState } from 'react';
import { ErrorNote } from '../../components/common.jsx';
import { Panel, listIn, num, useLoad, when } from './shared.jsx';

function Rejects({ api, id }) {
  const [pages, setPages] = useState({ rows: [], next: null, error: null, loading: true, batch: null });
  async function more(cursor) {
    setPages((p) => ({ ...p, loading: true }));
    try {
      const d = await api.ingestion(id, { limit: 50, cursor });
      setPages((p) => ({ rows: p.rows.concat(d.rejects || []), next: d.next_cursor, error: null, loading: false, batch: d.batch }));
    } catch (error) {
      setPages((p) => ({ ...p, error, loading: false }));
    }
  }
  useEffect(() => { more(undefined); }, [id]); // eslint-disable-line react-hooks/exhaustive-deps
  return (
    <div className="rejects" aria-label={`Rejected lines of batch ${id}`} role="region">
      <ErrorNote error={pages.error} what="Rejected lines" />
      {pages.batch && pages.rows.length === 0 ? <p className="muted small">No rejected lines.</p> : null}
      {pages.rows.length ? (
        <table>
          <thead><tr><th scope="col">line</th><th scope="col">raw</th><th scope="col">reason</th></tr></thead>
          <tbody>{pages.rows.map((r) => (
            <tr key={r.line_no}><td>{r.line_no}</td><td><code>{r.raw_line}</code></td><td>{r.reason}</td></tr>
          ))}</tbody>
        </table>
      ) : null}
      {pages.next ? <button className="btn small" disabled={pages.loading} onClick={() => more(pages.next)}>More rejects</button> : null}
    </div>
  );
}

export function Ingestions({ api }) {
  const load = useLoad(() => api.ingestions({ limit: 50 }), [api]);
  const [open, setOpen] = useState(null);
  return (
    <Panel title="Ingestion batches" id="p-ingest" load={load} what="Ingestion history">
      {(d) => (
        <table>
          <thead><tr><th scope="col">batch</th><th scope="col">kind</th><th scope="col">file</th><th scope="col">status</th><th scope="col">rows</th><th scope="col">accepted</th><th scope="col">rejected</th><th scope="col">started</th></tr></thead>
          <tbody>{listIn(d, 'batches', 'ingestions').slice(0, 50).flatMap((b) => [
            <tr key={b.id}>
              <td>{b.id}</td><td>{b.kind || '–'}</td><td className="small">{b.file_name}</td>
              <td><span className={`stage ${b.status}`}>{b.status}</span>{b.error ? <span className="bad small"> {b.error}</span> : null}</td>
              <td>{num(b.rows_total)}</td><td>{num(b.rows_accepted)}</td>
              <td className={b.rows_rejected ? 'bad' : ''}>
                {num(b.rows_rejected)}{' '}
                {b.rows_rejected ? (
                  <button className="btn small" aria-expanded={open === b.id} onClick={() => setOpen(open === b.id ? null : b.id)}>
                    {open === b.id ? 'Hide' : 'Show'} rejects
                  </button>
                ) : null}
              </td>
              <td className="small">{when(b.started_at)}</td>
            </tr>,
            open === b.id ? <tr key={`${b.id}-r`}><td colSpan={8}><Rejects api={api} id={b.id} /></td></tr> : null,
          ])}</tbody>
        </table>
      )}
    </Panel>
  );
}
