// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { AuthProvider } from '../auth.jsx';
import { Router } from '../router.jsx';
import { AdminPage } from './Admin.jsx';
import { ApiError } from '../api/client.js';

afterEach(() => { cleanup(); vi.restoreAllMocks(); });

function stub(over) {
  return {
    claims: { sub: '1', role: 'admin' },
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(true),
    ready: vi.fn(async () => ({ status: 200, body: { checks: { postgres: { status: 'ok' }, inference: { status: 'ok', models: [{ name: 'recsys', version: 'v2' }] } } } })),
    metrics: vi.fn(async () => '# TYPE cinematch_http_requests_total counter\ncinematch_http_requests_total{code="200"} 40\ncinematch_http_requests_total{code="500"} 2\n'),
    models: vi.fn(async () => ({ models: [{ name: 'recsys', task: 'recsys', versions: [
      { version: 'v1', stage: 'archived', metrics: { ndcg_at_10: 0.31 } },
      { version: 'v2', stage: 'production', metrics: { ndcg_at_10: 0.33 } },
      { version: 'v3', stage: 'staging', metrics: { ndcg_at_10: 0.34 } }] }] })),
    stage: vi.fn(async () => ({})),
    runs: vi.fn(async () => ({ runs: [
      { id: 1, model_name: 'recsys', status: 'succeeded', started_at: '2026-11-20T00:00:00Z', metrics: { rmse: 0.9, ndcg_at_10: 0.31 } },
      { id: 2, model_name: 'recsys', status: 'failed', started_at: '2026-11-21T00:00:00Z', metrics: {}, error: 'gate' }] })),
    drift: vi.fn(async () => ({ reports: [
      { id: 5, created_at: '2026-11-20T03:30:00Z', ks_statistic: 0.04, ks_pvalue: 0.2, psi: 0.05, psi_band: 'stable', drift_detected: false },
      { id: 6, created_at: '2026-11-21T03:30:00Z', ks_statistic: 0.2, ks_pvalue: 0.001, psi: 0.3, psi_band: 'significant', drift_detected: true }] })),
    ingestions: vi.fn(async () => { throw new ApiError(404, 'not_found', 'no such endpoint'); }),
    ...over,
  };
}

const mount = (api) => render(<Router initial={{ path: '/admin', search: '' }}><AuthProvider api={api}><AdminPage /></AuthProvider></Router>);

describe('AdminPage', () => {
  it('shows readiness, summed metrics, versions, run and drift charts, and a missing panel as such', async () => {
    mount(stub());
    expect((await screen.findByText('ready')).className).toBe('good');
    const metrics = await screen.findByText('cinematch_http_requests_total');
    expect(metrics.closest('tr').textContent).toContain('42');
    const models = screen.getByRole('region', { name: 'Models and versions' });
    await within(models).findByText('v3');
    const drift = screen.getByRole('region', { name: 'Drift' });
    await within(drift).findByRole('img', { name: 'PSI: psi 2 points' });
    expect(drift.querySelectorAll('line.threshold')).toHaveLength(2);
    const runs = screen.getByRole('region', { name: 'Training runs' });
    await within(runs).findByRole('img', { name: /Run metrics over time: rmse 1 points, ndcg_at_10 1 points/ });
    await screen.findByText('Ingestion history is not available on this server yet.');
  });

  it('promotes a staging version after confirmation and reloads the registry', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const api = stub();
    mount(api);
    const row = (await screen.findByText('v3')).closest('tr');
    fireEvent.click(within(row).getByRole('button', { name: 'Promote' }));
    await waitFor(() => expect(api.stage).toHaveBeenCalledWith('recsys', 'v3', 'production'));
    await waitFor(() => expect(api.models).toHaveBeenCalledTimes(2));
  });

  it('warns a non-admin that the panels will be refused', async () => {
    mount(stub({ claims: { sub: '2', role: 'user' } }));
    expect((await screen.findByText(/not an administrator/)).getAttribute('role')).toBe('status');
  });
});
