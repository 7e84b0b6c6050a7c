import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link } from '../router.jsx';
import { ErrorNote, GENRES, MovieCard, Spinner } from '../components/common.jsx';

function Popular({ genre, title = 'Popular right now' }) {
  const { api } = useAuth();
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    setData(null); setError(null);
    api.popular({ k: 18, genre }).then(setData, setError);
  }, [api, genre]);
  return (
    <section aria-label={title}>
      <h2>{title}</h2>
      <ErrorNote error={error} what="Popular movies" />
      {!data && !error ? <Spinner /> : null}
      {data ? <ul className="grid">{data.recommendations.map((m) => <MovieCard key={m.movie_id} movie={m} />)}</ul> : null}
    </section>
  );
}

export function HomePage() {
  const { user } = useAuth();
  const [genre, setGenre] = useState('');
  return (
    <>
      <section className="hero">
        <h1>Tonight's feature, picked for you.</h1>
        <p>Rate a few movies you love and cinematch finds the next one. Or just ask in the chat.</p>
        <p>{user ? <Link className="btn primary" to="/for-you">Your picks</Link>
          : <><Link className="btn primary" to="/register">Get started</Link> <Link className="btn" to="/login">Log in</Link></>}
          {' '}<Link className="btn" to="/movies">Browse movies</Link></p>
      </section>
      <div className="chips" role="group" aria-label="Genre">
        {['', ...GENRES.slice(0, 12)].map((g) => (
          <button key={g || 'all'} className={`chip${genre === g ? ' on' : ''}`} aria-pressed={genre === g} onClick={() => setGenre(g)}>{g || 'All'}</button>
        ))}
      </div>
      <Popular genre={genre} />
    </>
  );
}

export function ForYouPage() {
  const { api, user } = useAuth();
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [genre, setGenre] = useState('');
  const [tick, setTick] = useState(0);

  useEffect(() => {
    if (!user) return;
    setData(null); setError(null);
    const filters = genre ? { genres: [genre] } : undefined;
    api.recommend({ k: 18, exclude_seen: true, ...(filters ? { filters } : {}) }).then(setData, setError);
  }, [api, user, genre, tick]);

  if (!user) {
    return (
      <>
        <p className="note"><Link to="/login">Log in</Link> for picks made for you. Meanwhile, here is what everyone is watching.</p>
        <Popular />
      </>
    );
  }
  const recs = data ? data.recommendations : [];
  return (
    <section aria-labelledby="fy-h">
      <div className="row">
        <h1 id="fy-h">Your picks</h1>
        <label className="inline">Genre{' '}
          <select value={genre} onChange={(e) => setGenre(e.target.value)}>
            <option value="">Any</option>
            {GENRES.map((g) => <option key={g} value={g}>{g}</option>)}
          </select>
        </label>
        <button className="btn" onClick={() => setTick(tick + 1)}>Refresh</button>
      </div>
      {error ? <><ErrorNote error={error} what="Recommendations" /><Popular title="Popular instead" genre={genre} /></> : null}
      {!data && !error ? <Spinner label="Picking movies" /> : null}
      {data ? (
        <>
          {data.is_fallback ? (
            <p className="note" role="status">
              These are popular picks{data.fallback_reason ? ` (${data.fallback_reason.replace(/_/g, ' ')})` : ''}.
              Rate a few movies and your own picks appear here. <Link to="/movies">Find movies to rate →</Link>
            </p>
          ) : null}
          {data.model_version ? <p className="muted small">model {data.model_version}</p> : null}
          {recs.length ? (
            <ul className="grid">{recs.map((m) => (
              <MovieCard key={m.movie_id} movie={m}>
                {m.because ? <span className="because">Because you liked <Link to={`/movies/${m.because.movie_id}`}>{m.because.title}</Link></span> : null}
              </MovieCard>
            ))}</ul>
          ) : <Popular title="Popular instead" genre={genre} />}
        </>
      ) : null}
    </section>
  );
}
