import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link } from '../router.jsx';
import { ErrorNote, Spinner } from '../components/common.jsx';

const when = (t) => (t ? new Date(t).toLocaleString() : 'never');

// The caller's profile and API keys (for the OpenAI-compatible /v1 endpoints
// and scripts).  A new key is shown once, right after it is created.
export function AccountPage() {
  const { api, user } = useAuth();
  const [me, setMe] = useState(null);
  const [keys, setKeys] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState('');
  const [created, setCreated] = useState(null);

  const load = () => api.keys().then((r) => setKeys((r && r.keys) || []), setError);
  useEffect(() => {
    if (!user) return;
    api.me().then((r) => setMe(r.user || r), () => {});
    load();
  }, [api, user]); // eslint-disable-line react-hooks/exhaustive-deps

  if (!user) return <p className="note"><Link to="/login">Log in</Link> to manage your account.</p>;

  async function create(e) {
    e.preventDefault();
    if (!name.trim()) return;
    setError(null);
    try {
      const k = await api.createKey(name.trim());
      setCreated(k); setName('');
      load();
    } catch (err) { setError(err); }
  }
  async function revoke(k) {
    if (!window.confirm(`Revoke the key "${k.name}"? Programs using it stop working.`)) return;
    try { await api.deleteKey(k.id); load(); } catch (err) { setError(err); }
  }

  return (
    <section aria-labelledby="acct-h" className="account">
      <h1 id="acct-h">Your account</h1>
      {me ? <p className="muted">{me.email} · {me.role}{me.display_name ? ` · ${me.display_name}` : ''}</p> : null}
      <h2>API keys</h2>
      <p className="muted small">For scripts and the OpenAI-compatible endpoints: <code>Authorization: Bearer cm_…</code>.</p>
      <ErrorNote error={error} what="API keys" />
      {created ? (
        <div className="note" role="status">
          <p>Key <strong>{created.name}</strong> created. Copy it now: it is not shown again.</p>
          <code className="secret" aria-label="new API key">{created.key}</code>
        </div>
      ) : null}
      <form className="filters" onSubmit={create}>
        <label className="grow"><span>New key name</span>
          <input name="key-name" value={name} onChange={(e) => setName(e.target.value)} maxLength={100} placeholder="e.g. laptop script" />
        </label>
        <button className="btn primary" type="submit" disabled={!name.trim()}>Create key</button>
      </form>
      {!keys && !error ? <Spinner /> : null}
      {keys ? (
        keys.length ? (
          <table>
            <thead><tr><th scope="col">name</th><th scope="col">prefix</th><th scope="col">created</th><th scope="col">last used</th><th scope="col"><span className="sr-only">actions</span></th></tr></thead>
            <tbody>{keys.map((k) => (
              <tr key={k.id}><td>{k.name}</td><td><code>{k.prefix}</code></td><td className="small">{when(k.created_at)}</td>
                <td className="small">{when(k.last_used_at)}</td>
                <td><button className="btn small" onClick={() => revoke(k)} aria-label={`Revoke ${k.name}`}>Revoke</button></td></tr>
            ))}</tbody>
          </table>
        ) : <p className="muted">No keys yet.</p>
      ) : null}
    </section>
  );
}
