// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import { StrictMode } from 'react';
import { AuthProvider } from '../auth.jsx';
import { Router } from '../router.jsx';
import { ApiError } from '../api/client.js';
import { FORGOT_SENT, ResetPasswordPage, VerifyEmailPage } from './Recovery.jsx';
import { LoginPage } from './Auth.jsx';

afterEach(cleanup);

function stub(over) {
  return {
    claims: null,
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(false),
    verifyEmail: vi.fn(async () => null),
    resetPassword: vi.fn(async () => null),
    forgotPassword: vi.fn(async () => ({ message: 'if an account has this address, a reset link is on its way to it' })),
    forget: vi.fn(),
    ...over,
  };
}

// mounted at `url`, reading the address bar as the app does
function at(url, page, api) {
  window.history.replaceState(null, '', url);
  return render(<StrictMode><Router><AuthProvider api={api}>{page}</AuthProvider></Router></StrictMode>);
}

const badToken = () => new ApiError(400, 'invalid_request', 'the token is invalid, expired or already used');

describe('VerifyEmailPage', () => {
  it('confirms the token of the link once and takes it out of the address bar', async () => {
    const api = stub();
    at('/verify-email?token=cmo_abc', <VerifyEmailPage />, api);
    await screen.findByText('Your email address is confirmed. Thank you!');
    expect(api.verifyEmail).toHaveBeenCalledTimes(1);   // StrictMode runs effects twice
    expect(api.verifyEmail).toHaveBeenCalledWith('cmo_abc');
    expect(window.location.pathname + window.location.search).toBe('/verify-email');
    expect(screen.getByRole('link', { name: 'Log in →' })).toBeTruthy();
  });

  it('says a used or expired link is no good', async () => {
    const api = stub({ verifyEmail: vi.fn(async () => { throw badToken(); }) });
    at('/verify-email?token=cmo_used', <VerifyEmailPage />, api);
    expect((await screen.findByRole('alert')).textContent).toMatch(/invalid, has expired or was already used/);
  });

  it('without a token asks for the link as mailed, and calls nothing', async () => {
    const api = stub();
    at('/verify-email', <VerifyEmailPage />, api);
    expect((await screen.findByRole('alert')).textContent).toMatch(/no token/);
    expect(api.verifyEmail).not.toHaveBeenCalled();
  });

  it('shows a rate limit as such, not as a bad link', async () => {
    const api = stub({ verifyEmail: vi.fn(async () => { throw new ApiError(429, 'rate_limited', 'slow down', { retryAfter: 30 }); }) });
    at('/verify-email?token=cmo_x', <VerifyEmailPage />, api);
    expect((await screen.findByRole('alert')).textContent).toMatch(/Too many requests; try again in 30 s/);
  });
});

describe('ResetPasswordPage', () => {
  const fill = (a, b) => {
    fireEvent.change(screen.getByLabelText('New password'), { target: { value: a } });
    fireEvent.change(screen.getByLabelText('New password again'), { target: { value: b } });
    fireEvent.click(screen.getByRole('button', { name: 'Set the new password' }));
  };

  it('checks length and the repeat before it sends anything', async () => {
    const api = stub();
    at('/reset-password?token=cmo_r', <ResetPasswordPage />, api);
    fill('short', 'short');
    await screen.findByText('Use 8 characters or more.');
    fill('long enough 1', 'long enough 2');
    await screen.findByText('The two passwords differ.');
    expect(api.resetPassword).not.toHaveBeenCalled();
  });

  it('sets the new password with the token and signs this tab out', async () => {
    const api = stub();
    at('/reset-password?token=cmo_r', <ResetPasswordPage />, api);
    expect(window.location.search).toBe('');
    fill('new password 1', 'new password 1');
    await screen.findByText('Your password is changed. Every session was signed out.');
    expect(api.resetPassword).toHaveBeenCalledWith('cmo_r', 'new password 1');
    expect(api.forget).toHaveBeenCalled();
  });

  it('offers a new link when the token is no good', async () => {
    const api = stub({ resetPassword: vi.fn(async () => { throw badToken(); }) });
    at('/reset-password?token=cmo_old', <ResetPasswordPage />, api);
    fill('new password 1', 'new password 1');
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/invalid, has expired or was already used/);
    expect(screen.getByRole('link', { name: 'Ask for a new one' }).getAttribute('href')).toBe('/login?forgot=1');
  });

  it("shows the server's field message under the field", async () => {
    const api = stub({ resetPassword: vi.fn(async () => { throw new ApiError(422, 'validation_failed', 'bad', { fields: { new_password: 'too common' } }); }) });
    at('/reset-password?token=cmo_r', <ResetPasswordPage />, api);
    fill('password', 'password');
    await screen.findByText('too common');
  });
});

describe('forgot password on the login page', () => {
  it('sends the address and always answers the same', async () => {
    const api = stub();
    at('/login', <LoginPage />, api);
    fireEvent.change(screen.getByLabelText('Email'), { target: { value: 'ann@example.com' } });
    fireEvent.click(screen.getByRole('button', { name: 'Forgot your password?' }));
    // the address typed for logging in is carried over
    expect(screen.getByLabelText('Email for the reset link').value).toBe('ann@example.com');
    fireEvent.click(screen.getByRole('button', { name: 'Send me a reset link' }));
    expect((await screen.findByRole('status')).textContent).toBe(FORGOT_SENT);
    expect(api.forgotPassword).toHaveBeenCalledWith('ann@example.com');
  });

  it('a rejected address reads like any other', async () => {
    const api = stub({ forgotPassword: vi.fn(async () => { throw new ApiError(422, 'validation_failed', 'bad', { fields: { email: 'invalid' } }); }) });
    at('/login?forgot=1', <LoginPage />, api);
    fireEvent.change(screen.getByLabelText('Email for the reset link'), { target: { value: 'not-an-address' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send me a reset link' }));
    expect((await screen.findByRole('status')).textContent).toBe(FORGOT_SENT);
  });
});
