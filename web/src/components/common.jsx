import { Link } from '../router.jsx';

export const GENRES = ['Action', 'Adventure', 'Animation', 'Children', 'Comedy', 'Crime',
  'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'IMAX', 'Musical', 'Mystery',
  'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western'];

// An error from the API, shown in words.  A 404 from an endpoint that this
// server does not have yet reads as "not available" rather than as a failure.
export function ErrorNote({ error, what = 'This' }) {
  if (!error) return null;
  if (error.name === 'AbortError') return null;
  let text = error.message || String(error);
  if (error.missing) text = `${what} is not available on this server yet.`;
  else if (error.status === 401) text = 'Please log in to see this.';
  else if (error.status === 403) text = 'You do not have access to this.';
  else if (error.status === 429) text = `Too many requests; try again${error.retryAfter ? ` in ${error.retryAfter} s` : ' shortly'}.`;
  else if (error.status === 503) text = 'The service is busy or starting; try again shortly.';
  return (
    <p className={error.missing ? 'note' : 'error'} role={error.missing ? 'status' : 'alert'}>
      {text}
      {error.requestId && !error.missing ? <span className="rid"> (request {error.requestId})</span> : null}
    </p>
  );
}

export function Spinner({ label = 'Loading' }) {
  return <div className="spinner" role="status" aria-live="polite"><span className="reel" aria-hidden="true" />{label}…</div>;
}

// A poster stand-in: a gradient picked from the movie id, the title set on it.
export function Poster({ id, title, small }) {
  const hue = (Number(id) * 47) % 360;
  const style = { background: `linear-gradient(160deg, hsl(${hue} 55% 32%), hsl(${(hue + 40) % 360} 60% 12%))` };
  return (
    <div className={small ? 'poster small' : 'poster'} style={style} aria-hidden="true">
      <span>{(title || '?').replace(/\s*\(\d{4}\)\s*$/, '')}</span>
    </div>
  );
}

export function MovieCard({ movie, children }) {
  const id = movie.movie_id;
  return (
    <li className="card">
      <Link to={`/movies/${id}`} className="card-link">
        <Poster id={id} title={movie.title} />
        <span className="card-title">{movie.title}</span>
      </Link>
      <span className="card-meta">
        {movie.year ? <span>{movie.year}</span> : null}
        {Array.isArray(movie.genres) && movie.genres.length ? <span> · {movie.genres.slice(0, 3).join(', ')}</span> : null}
      </span>
      {children}
    </li>
  );
}
