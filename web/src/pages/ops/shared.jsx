// Pieces the ops dashboard panels share: loading state, the panel frame,
// number and time formatting.
import { useEffect, useState } from 'react';
import { ErrorNote, Spinner } from '../../components/common.jsx';

// Responses are objects holding one list ({runs:[…]}, {reports:[…]}, …): take
// the named one, else the first array found, else the value itself if a list.
export function listIn(r, ...keys) {
  if (Array.isArray(r)) return r;
  if (!r || typeof r !== 'object') return [];
  for (const k of keys) if (Array.isArray(r[k])) return r[k];
  const first = Object.values(r).find(Array.isArray);
  return first || [];
}

export const when = (t) => (t ? new Date(t).toLocaleString() : '–');
export const num = (v, d = 4) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : v ?? '–');
export const metricText = (m, n = 4) => Object.entries(m || {}).filter(([, x]) => typeof x !== 'object')
  .slice(0, n).map(([k, x]) => `${k} ${num(x)}`).join(' · ');

// fn() → {data, error, loading, reload()}; runs again when deps change.
export function useLoad(fn, deps) {
  const [state, set] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    set((s) => ({ ...s, loading: true }));
    // through a promise, so a function that throws is an error state too
    Promise.resolve().then(fn).then((data) => live && set({ data, error: null, loading: false }),
      (error) => live && set({ data: null, error, loading: false }));
    return () => { live = false; };
  }, [...deps, tick]); // eslint-disable-line react-hooks/exhaustive-deps
  return { ...state, reload: () => setTick((t) => t + 1) };
}

export function Panel({ title, id, load, what, children, tools }) {
  return (
    <section className="panel" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {tools || null}
      <ErrorNote error={load.error} what={what} />
      {load.loading && !load.data ? <Spinner /> : null}
      {load.data ? children(load.data) : null}
    </section>
  );
}

// A 422's fields as one line ("from: must be before to").
export function errorText(e) {
  if (!e) return '';
  if (e.fields) return Object.entries(e.fields).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : v.message}`).join('; ');
  return e.message || String(e);
}
