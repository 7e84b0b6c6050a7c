// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { AuthProvider } from '../auth.jsx';
import { Router } from '../router.jsx';
import { AccountPage } from './Account.jsx';

afterEach(() => { cleanup(); vi.restoreAllMocks(); });

function stub() {
  let keys = [{ id: 1, name: 'old', prefix: 'cm_ab12', created_at: '2026-11-01T00:00:00Z', last_used_at: null }];
  return {
    claims: { sub: '5', role: 'user' },
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(true),
    me: vi.fn(async () => ({ user: { id: 5, email: 'me@example.com', role: 'user' } })),
    keys: vi.fn(async () => ({ keys })),
    createKey: vi.fn(async (name) => { keys = [...keys, { id: 2, name, prefix: 'cm_cd34' }]; return { id: 2, name, prefix: 'cm_cd34', key: 'cm_cd34_secret' }; }),
    deleteKey: vi.fn(async (id) => { keys = keys.filter((k) => k.id !== id); return null; }),
  };
}

const mount = (api) => render(<Router initial={{ path: '/account', search: '' }}><AuthProvider api={api}><AccountPage /></AuthProvider></Router>);

describe('AccountPage', () => {
  it('creates a key, shows it once, and revokes one after confirmation', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const api = stub();
    mount(api);
    await screen.findByText('old');
    fireEvent.change(screen.getByLabelText('New key name'), { target: { value: 'laptop' } });
    fireEvent.click(screen.getByRole('button', { name: 'Create key' }));
    expect((await screen.findByLabelText('new API key')).textContent).toBe('cm_cd34_secret');
    await within(screen.getByRole('table')).findByText('laptop');
    expect(api.createKey).toHaveBeenCalledWith('laptop');
    fireEvent.click(screen.getByRole('button', { name: 'Revoke old' }));
    await waitFor(() => expect(api.deleteKey).toHaveBeenCalledWith(1));
    await waitFor(() => expect(screen.queryByText('old')).toBeNull());
    expect(within(screen.getByRole('table')).getAllByRole('row')).toHaveLength(2);
  });
});
