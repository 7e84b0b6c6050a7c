import { useEffect, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link } from '../router.jsx';
import { ErrorNote, MovieCard, Poster, Spinner } from '../components/common.jsx';
import { StarRating } from '../components/StarRating.jsx';

export function MoviePage({ id }) {
  const { api, user } = useAuth();
  const [movie, setMovie] = useState(null);
  const [error, setError] = useState(null);
  const [similar, setSimilar] = useState(null);
  const [simError, setSimError] = useState(null);
  const [rating, setRating] = useState(null);
  const [rateState, setRateState] = useState({ busy: false, error: null, saved: false });

  useEffect(() => {
    setMovie(null); setError(null); setSimilar(null); setSimError(null); setRating(null);
    setRateState({ busy: false, error: null, saved: false });
    api.movie(id).then(setMovie, setError);
    api.similar(Number(id), 12).then(setSimilar, setSimError);
  }, [api, id]);

  useEffect(() => {
    if (!user) return;
    api.ratings().then((r) => {
      const list = (r && (r.ratings || r)) || [];
      const mine = Array.isArray(list) && list.find((x) => String(x.movie_id) === String(id));
      if (mine) setRating(Number(mine.rating));
    }, () => {});
  }, [api, id, user]);

  async function rate(v) {
    const before = rating;
    setRating(v);
    setRateState({ busy: true, error: null, saved: false });
    try {
      await api.rate(Number(id), v);
      setRateState({ busy: false, error: null, saved: true });
    } catch (e) {
      setRating(before);
      setRateState({ busy: false, error: e, saved: false });
    }
  }

  if (error) return <ErrorNote error={error} />;
  if (!movie) return <Spinner />;
  return (
    <article className="movie" aria-labelledby="movie-h">
      <div className="movie-head">
        <Poster id={movie.movie_id} title={movie.title} />
        <div>
          <h1 id="movie-h">{movie.title}</h1>
          <p className="muted">
            {movie.year || ''}{movie.genres && movie.genres.length ? ` · ${movie.genres.join(', ')}` : ''}
          </p>
          {movie.rating_count !== undefined ? (
            <p className="score"><span aria-hidden="true">★</span> {movie.rating_mean ? Number(movie.rating_mean).toFixed(2) : '–'}
              <span className="muted"> from {movie.rating_count} rating{movie.rating_count === 1 ? '' : 's'}</span></p>
          ) : null}
          {user ? (
            <div className="rate">
              <StarRating value={rating} onChange={rate} disabled={rateState.busy} />
              <span aria-live="polite" className="muted">
                {rateState.saved ? <>Saved. <Link to="/for-you">See your updated picks →</Link></> : null}
              </span>
              <ErrorNote error={rateState.error} what="Rating" />
            </div>
          ) : <p><Link to="/login">Log in</Link> to rate this movie.</p>}
        </div>
      </div>
      <h2>More like this</h2>
      <ErrorNote error={simError} what="Similar movies" />
      {!similar && !simError ? <Spinner label="Finding similar movies" /> : null}
      {similar ? (
        similar.similar_items.length ? (
          <ul className="grid">{similar.similar_items.map((m) => (
            <MovieCard key={m.movie_id} movie={m}><span className="badge">{Math.round(m.score * 100)}% match</span></MovieCard>
          ))}</ul>
        ) : <p className="note">No similar movies for this one yet.</p>
      ) : null}
    </article>
  );
}
