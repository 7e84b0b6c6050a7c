import { AuthProvider, useAuth } from './auth.jsx';
import { Link, Router, match, useRouter } from './router.jsx';
import { Spinner } from './components/common.jsx';
import { LoginPage } from './pages/Auth.jsx';
import { MoviesPage } from './pages/Movies.jsx';
import { MoviePage } from './pages/Movie.jsx';
import { ForYouPage, HomePage } from './pages/ForYou.jsx';
import { ChatPage } from './pages/Chat.jsx';
import { AdminPage } from './pages/Admin.jsx';
import { AccountPage } from './pages/Account.jsx';
import { ResetPasswordPage, VerifyEmailPage } from './pages/Recovery.jsx';

function Nav() {
  const { api, user, isAdmin } = useAuth();
  const { navigate } = useRouter();
  return (
    <header className="topbar">
      <a className="skip" href="#main">Skip to content</a>
      <Link to="/" className="brand">
        <svg aria-hidden="true" width="22" height="22" viewBox="0 0 32 32"><circle cx="16" cy="16" r="12" fill="none" stroke="currentColor" strokeWidth="3" /><circle cx="16" cy="9" r="2.5" fill="currentColor" /><circle cx="16" cy="23" r="2.5" fill="currentColor" /><circle cx="9" cy="16" r="2.5" fill="currentColor" /><circle cx="23" cy="16" r="2.5" fill="currentColor" /></svg>
        {' '}cinematch
      </Link>
      <nav aria-label="Main">
        <Link to="/movies">Movies</Link>
        <Link to="/for-you">For you</Link>
        <Link to="/chat">Chat</Link>
        {isAdmin ? <Link to="/admin">Ops</Link> : null}
        <a href="/api/docs/">API</a>
      </nav>
      <div className="who">
        {user ? (
          <>
            <Link to="/account" className="small">{user.name || user.email || `user ${user.id}`}</Link>
            <button className="btn small" onClick={async () => { await api.logout(); navigate('/'); }}>Log out</button>
          </>
        ) : (
          <>
            <Link to="/login" className="btn small">Log in</Link>
            <Link to="/register" className="btn small primary">Sign up</Link>
          </>
        )}
      </div>
    </header>
  );
}

function Routes() {
  const { path } = useRouter();
  const { restoring } = useAuth();
  if (restoring) return <Spinner label="Restoring your session" />;
  let m;
  if (path === '/') return <HomePage />;
  if (path === '/login') return <LoginPage />;
  if (path === '/register') return <LoginPage register />;
  if (path === '/verify-email') return <VerifyEmailPage />;
  if (path === '/reset-password') return <ResetPasswordPage />;
  if (path === '/movies') return <MoviesPage />;
  if ((m = match('/movies/:id', path))) return <MoviePage id={m.id} />;
  if (path === '/for-you') return <ForYouPage />;
  if (path === '/chat') return <ChatPage />;
  if ((m = match('/chat/:id', path))) return <ChatPage id={m.id} />;
  if (path === '/admin') return <AdminPage />;
  if (path === '/account') return <AccountPage />;
  return <section><h1>Scene missing</h1><p>There is no page at {path}. <Link to="/">Back to the lobby</Link>.</p></section>;
}

export function App({ api }) {
  return (
    <Router>
      <AuthProvider api={api}>
        <Nav />
        <main id="main" tabIndex={-1}><Routes /></main>
        <footer className="foot muted small">cinematch · <a href="/api/docs/">API documentation</a></footer>
      </AuthProvider>
    </Router>
  );
}
