// The pages behind the links that `cinematch mailer` sends:
//   /verify-email?token=cmo_…     confirms the address at once
//   /reset-password?token=cmo_…   asks for a new password
// and the "forgot password" form of the login page.  Tokens are single use;
// each page takes the token out of the address bar (history) first.
import { useEffect, useRef, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link, useRouter } from '../router.jsx';
import { ErrorNote } from '../components/common.jsx';

// What forgot-password answers, whether or not the address has an account.
export const FORGOT_SENT = 'If an account has this address, a reset link is on its way to it. Check your mail (and the spam folder).';

// The token of the link, read once: the URL is replaced by one without it.
function useLinkToken(path) {
  const { search, navigate } = useRouter();
  const [token] = useState(() => new URLSearchParams(search).get('token') || '');
  useEffect(() => {
    if (new URLSearchParams(search).has('token')) navigate(path, { replace: true });
  }, []); // eslint-disable-line react-hooks/exhaustive-deps
  return token;
}

const badLink = (e) => e && (e.status === 400 || e.status === 404 || e.status === 422);

export function VerifyEmailPage() {
  const { api, user } = useAuth();
  const token = useLinkToken('/verify-email');
  const [state, setState] = useState(token ? 'working' : 'missing');
  const [error, setError] = useState(null);
  const sent = useRef(false);   // once, even if effects run twice
  useEffect(() => {
    if (!token || sent.current) return;
    sent.current = true;
    api.verifyEmail(token).then(() => setState('ok'), (e) => { setError(e); setState('failed'); });
  }, [api, token]);
  return (
    <section className="auth-card" aria-labelledby="verify-h">
      <h1 id="verify-h">Confirm your email</h1>
      <div aria-live="polite">
        {state === 'working' ? <p className="muted" role="status">Checking your link…</p> : null}
        {state === 'ok' ? (
          <>
            <p className="good" role="status">Your email address is confirmed. Thank you!</p>
            <p>{user ? <Link to="/for-you">On to your picks →</Link> : <Link to="/login">Log in →</Link>}</p>
          </>
        ) : null}
        {state === 'missing' ? <p className="error" role="alert">This link has no token. Open the link from the mail as it is.</p> : null}
        {state === 'failed' ? (
          badLink(error) ? (
            <p className="error" role="alert">This link is invalid, has expired or was already used.
              {' '}If your address is not confirmed yet, sign up again or ask the site&apos;s operator.</p>
          ) : <ErrorNote error={error} what="Email confirmation" />
        ) : null}
      </div>
    </section>
  );
}

export function ResetPasswordPage() {
  const { api } = useAuth();
  const token = useLinkToken('/reset-password');
  const [form, setForm] = useState({ password: '', confirm: '' });
  const [problem, setProblem] = useState(null);   // client-side check
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState(false);
  const on = (e) => setForm({ ...form, [e.target.name]: e.target.value });

  async function submit(e) {
    e.preventDefault();
    setError(null);
    if (form.password.length < 8) { setProblem('Use 8 characters or more.'); return; }
    if (form.password !== form.confirm) { setProblem('The two passwords differ.'); return; }
    setProblem(null);
    setBusy(true);
    try {
      await api.resetPassword(token, form.password);
      api.forget();   // every session was revoked, this tab's too
      setDone(true);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  if (!token) {
    return (
      <section className="auth-card" aria-labelledby="reset-h">
        <h1 id="reset-h">Choose a new password</h1>
        <p className="error" role="alert">This link has no token. <Link to="/login?forgot=1">Ask for a new reset link</Link>.</p>
      </section>
    );
  }
  const fieldError = problem || (error && error.status === 422 && error.fields && error.fields.new_password) || null;
  return (
    <section className="auth-card" aria-labelledby="reset-h">
      <h1 id="reset-h">Choose a new password</h1>
      {done ? (
        <div role="status">
          <p className="good">Your password is changed. Every session was signed out.</p>
          <p><Link to="/login">Log in with the new password →</Link></p>
        </div>
      ) : (
        <form onSubmit={submit} noValidate>
          <div className="field">
            <label htmlFor="f-new-password">New password</label>
            <input id="f-new-password" name="password" type="password" autoComplete="new-password" required minLength={8}
              value={form.password} onChange={on} aria-invalid={fieldError ? true : undefined}
              aria-describedby={fieldError ? 'f-new-password-err' : undefined} />
            {fieldError ? <span id="f-new-password-err" className="field-error">{fieldError}</span> : null}
          </div>
          <div className="field">
            <label htmlFor="f-confirm">New password again</label>
            <input id="f-confirm" name="confirm" type="password" autoComplete="new-password" required
              value={form.confirm} onChange={on} />
          </div>
          {error && error.status === 400 ? (
            <p className="error" role="alert">This reset link is invalid, has expired or was already used.
              {' '}<Link to="/login?forgot=1">Ask for a new one</Link>.</p>
          ) : error && error.status === 422 ? null : <ErrorNote error={error} what="Password reset" />}
          <button className="btn primary" type="submit" disabled={busy}>{busy ? 'One moment…' : 'Set the new password'}</button>
        </form>
      )}
    </section>
  );
}

// On the login page: one field, and always the same answer.
export function ForgotPassword({ initialEmail = '', onClose }) {
  const { api } = useAuth();
  const [email, setEmail] = useState(initialEmail);
  const [busy, setBusy] = useState(false);
  const [sent, setSent] = useState(false);
  const [error, setError] = useState(null);
  async function submit(e) {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      await api.forgotPassword(email.trim());
      setSent(true);
    } catch (err) {
      // a validation error must not read differently from an unknown
      // address; a rate limit or an outage may
      if (err.status === 422) setSent(true);
      else setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <section className="forgot" aria-labelledby="forgot-h">
      <h2 id="forgot-h">Forgot your password?</h2>
      {sent ? <p className="note" role="status">{FORGOT_SENT}</p> : (
        <form onSubmit={submit} noValidate>
          <div className="field">
            <label htmlFor="f-forgot-email">Email for the reset link</label>
            <input id="f-forgot-email" type="email" autoComplete="email" required value={email}
              onChange={(e) => setEmail(e.target.value)} />
          </div>
          <ErrorNote error={error} what="Password reset" />
          <button className="btn" type="submit" disabled={busy || !email.trim()}>{busy ? 'One moment…' : 'Send me a reset link'}</button>
        </form>
      )}
      {onClose ? <p><button type="button" className="linkish" onClick={onClose}>Back to logging in</button></p> : null}
    </section>
  );
}
