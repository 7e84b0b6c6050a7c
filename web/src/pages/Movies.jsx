import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { useRouter } from '../router.jsx';
import { ErrorNote, GENRES, MovieCard, Spinner } from '../components/common.jsx';

const PAGE = 24;

export function MoviesPage() {
  const { api } = useAuth();
  const { search, navigate } = useRouter();
  const params = Object.fromEntries(new URLSearchParams(search));
  const [form, setForm] = useState({ q: params.q || '', genre: params.genre || '', year_min: params.year_min || '', year_max: params.year_max || '' });
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const offset = Number(params.offset || 0);

  useEffect(() => {
    const ctl = new AbortController();
    setError(null);
    api.movies({ q: params.q, genre: params.genre, year_min: params.year_min, year_max: params.year_max, limit: PAGE, offset },
      { signal: ctl.signal })
      .then(setData, (e) => { if (e.name !== 'AbortError') setError(e); });
    return () => ctl.abort();
  }, [api, search]); // eslint-disable-line react-hooks/exhaustive-deps

  const go = (over) => {
    const p = new URLSearchParams();
    Object.entries({ ...form, ...over }).forEach(([k, v]) => { if (v !== '' && v !== 0 && v != null) p.set(k, v); });
    navigate(`/movies${p.toString() ? `?${p}` : ''}`);
  };
  const on = (e) => setForm({ ...form, [e.target.name]: e.target.value });
  const total = data ? data.total : 0;

  return (
    <section aria-labelledby="movies-h">
      <h1 id="movies-h">Find a movie</h1>
      <form className="filters" role="search" onSubmit={(e) => { e.preventDefault(); go({ offset: 0 }); }}>
        <label className="grow">
          <span className="sr-only">Title</span>
          <input type="search" name="q" placeholder="Search titles…" value={form.q} onChange={on} />
        </label>
        <label>
          <span>Genre</span>
          <select name="genre" value={form.genre} onChange={on}>
            <option value="">Any</option>
            {GENRES.map((g) => <option key={g} value={g}>{g}</option>)}
          </select>
        </label>
        <label><span>From</span><input name="year_min" type="number" min="1870" max="2100" inputMode="numeric" value={form.year_min} onChange={on} placeholder="year" /></label>
        <label><span>To</span><input name="year_max" type="number" min="1870" max="2100" inputMode="numeric" value={form.year_max} onChange={on} placeholder="year" /></label>
        <button className="btn primary" type="submit">Search</button>
      </form>
      <ErrorNote error={error} what="Movie search" />
      {!data && !error ? <Spinner /> : null}
      {data ? (
        <>
          <p className="muted" aria-live="polite">{total} movie{total === 1 ? '' : 's'}{total > PAGE ? `, ${offset + 1}–${Math.min(offset + PAGE, total)} shown` : ''}</p>
          <ul className="grid">{data.movies.map((m) => <MovieCard key={m.movie_id} movie={m} />)}</ul>
          <nav className="pager" aria-label="Pages">
            <button className="btn" disabled={offset === 0} onClick={() => go({ offset: Math.max(0, offset - PAGE) })}>← Previous</button>
            <button className="btn" disabled={offset + PAGE >= total} onClick={() => go({ offset: offset + PAGE })}>Next →</button>
          </nav>
        </>
      ) : null}
    </section>
  );
}
