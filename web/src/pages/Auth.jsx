import { useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link, useRouter } from '../router.jsx';
import { ErrorNote } from '../components/common.jsx';
import { ForgotPassword } from './Recovery.jsx';

function Field({ label, error, ...input }) {
  const id = `f-${input.name}`;
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <input id={id} aria-invalid={error ? true : undefined} aria-describedby={error ? `${id}-err` : undefined} {...input} />
      {error ? <span id={`${id}-err`} className="field-error">{error}</span> : null}
    </div>
  );
}

export function LoginPage({ register = false }) {
  const { api } = useAuth();
  const { navigate, search } = useRouter();
  const [forgot, setForgot] = useState(() => !register && new URLSearchParams(search).has('forgot'));
  const [form, setForm] = useState({ email: '', password: '', display_name: '' });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState(false);
  const on = (e) => setForm({ ...form, [e.target.name]: e.target.value });
  const fields = (error && error.fields) || {};

  async function submit(e) {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      if (register) {
        await api.register(form.email, form.password, form.display_name);
        setDone(true);
      }
      await api.login(form.email, form.password);
      navigate('/for-you');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="auth-card" aria-labelledby="auth-h">
      <h1 id="auth-h">{register ? 'Create your account' : 'Welcome back'}</h1>
      <form onSubmit={submit} noValidate>
        <Field label="Email" name="email" type="email" autoComplete="email" required
          value={form.email} onChange={on} error={fields.email} />
        <Field label="Password" name="password" type="password" required minLength={8}
          autoComplete={register ? 'new-password' : 'current-password'}
          value={form.password} onChange={on} error={fields.password} />
        {register ? (
          <Field label="Display name (optional)" name="display_name" autoComplete="nickname"
            value={form.display_name} onChange={on} error={fields.display_name} />
        ) : null}
        {error && error.status === 401 ? <p className="error" role="alert">Wrong email or password.</p>
          : error && error.status === 409 ? <p className="error" role="alert">An account with this email already exists. <Link to="/login">Log in</Link>?</p>
          : error && error.status === 422 ? <p className="error" role="alert">Please fix the fields above{register ? ' (passwords need 8 characters or more)' : ''}.</p>
          : <ErrorNote error={error} />}
        {done && error ? <p className="note">Account created; log in below.</p> : null}
        <button className="btn primary" type="submit" disabled={busy}>
          {busy ? 'One moment…' : register ? 'Sign up' : 'Log in'}
        </button>
      </form>
      {!register ? (
        forgot ? <ForgotPassword initialEmail={form.email} onClose={() => setForgot(false)} />
          : <p><button type="button" className="linkish" onClick={() => setForgot(true)}>Forgot your password?</button></p>
      ) : null}
      <p className="muted">
        {register ? <>Already have an account? <Link to="/login">Log in</Link></>
          : <>New here? <Link to="/register">Create an account</Link></>}
      </p>
    </section>
  );
}
