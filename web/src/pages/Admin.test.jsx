// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { AuthProvider } from '../auth.jsx';
import { Router } from '../router.jsx';
import { AdminPage } from './Admin.jsx';
import { ApiError } from '../api/client.js';

afterEach(() => { cleanup(); vi.restoreAllMocks(); });

// Answers shaped like the module's (tests/integration/test_admin_api.py).
function stub(over) {
  return {
    claims: { sub: '1', role: 'admin' },
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(true),
    ready: vi.fn(async () => ({ status: 200, body: { checks: { postgres: { status: 'ok' }, inference: { status: 'ok', models: [{ name: 'recsys', version: '2' }] } } } })),
    metrics: vi.fn(async () => '# TYPE cinematch_http_requests_total counter\ncinematch_http_requests_total{code="200"} 40\ncinematch_http_requests_total{code="500"} 2\n'),
    models: vi.fn(async () => ({ models: [{ name: 'recsys', task: 'recsys', production_version: 2, rollback_version: 1, versions: [
      { version: 3, stage: 'staging', metrics: { 'ndcg@10': 0.34 } },
      { version: 2, stage: 'production', metrics: { 'ndcg@10': 0.33 } },
      { version: 1, stage: 'archived', metrics: { 'ndcg@10': 0.31 } }] },
    { name: 'dialog', task: 'dialog', production_version: null, rollback_version: null, versions: [] }] })),
    stage: vi.fn(async (name, v, s) => ({ model_name: name, version: v, stage: s, previous_stage: 'staging', archived_version: 2, changed: true })),
    runs: vi.fn(async () => ({ runs: [
      { id: 2, model_name: 'recsys', status: 'failed', started_at: '2026-11-21T00:00:00Z', metrics: {}, params: {}, error: 'killed' },
      { id: 1, model_name: 'recsys', status: 'succeeded', started_at: '2026-11-20T00:00:00Z', metrics: { rmse: 0.9, 'ndcg@10': 0.31 }, params: { factors: 32 }, gate_decision: 'promoted', model_version: { version: 1, stage: 'archived' } }],
    next_cursor: null })),
    drift: vi.fn(async () => ({ reports: [
      { id: 6, created_at: '2026-11-21T03:30:00Z', ks_statistic: 0.2, ks_pvalue: 0.001, psi: 0.3, psi_band: 'significant', alert: true, reasons: ['psi', 'ks'], thresholds: { psi: 0.2, ks_pvalue: 0.01 } },
      { id: 5, created_at: '2026-11-20T03:30:00Z', ks_statistic: 0.04, ks_pvalue: 0.2, psi: 0.05, psi_band: 'stable', alert: false, reasons: [], thresholds: {} }],
    next_cursor: null })),
    ingestions: vi.fn(async () => { throw new ApiError(404, 'not_found', 'no such endpoint'); }),
    ingestion: vi.fn(),
    usage: vi.fn(async () => ({ group_by: 'user', interval: null, groups: 1, rows: [], totals: {} })),
    reload: vi.fn(async () => ({ status: 'reloaded', daemons: [{ socket: '/run/infer.sock', reloaded: true, models: [{ name: 'recsys', version: '3' }, { name: 'dialog', version: '1' }] }] })),
    ...over,
  };
}

const mount = (api) => render(<Router initial={{ path: '/admin', search: '' }}><AuthProvider api={api}><AdminPage /></AuthProvider></Router>);

describe('AdminPage', () => {
  it('shows readiness, summed metrics, versions, per-metric run charts, drift with thresholds, and a missing panel as such', async () => {
    mount(stub());
    expect((await screen.findByText('ready')).className).toBe('good');
    const metrics = await screen.findByText('cinematch_http_requests_total');
    expect(metrics.closest('tr').textContent).toContain('42');
    const models = screen.getByRole('region', { name: 'Models and versions' });
    await within(models).findByText('No versions registered.');
    const drift = screen.getByRole('region', { name: 'Drift' });
    await within(drift).findByRole('img', { name: 'PSI: psi 2 points' });
    // the two PSI bands and the report's own alert level (0.2); KS alpha 0.01
    expect(drift.querySelectorAll('line.threshold')).toHaveLength(4);
    expect(within(drift).getByText('yes: psi, ks')).toBeTruthy();
    const runs = screen.getByRole('region', { name: 'Training runs' });
    // one chart per metric, failed runs left out of the lines
    await within(runs).findByRole('img', { name: 'rmse over time: rmse 1 points' });
    within(runs).getByRole('img', { name: 'ndcg@10 over time: ndcg@10 1 points' });
    expect(within(runs).getByText('promoted')).toBeTruthy();
    expect(within(runs).getByText('killed')).toBeTruthy();
    await screen.findByText('Ingestion history is not available on this server yet.');
  });

  it('promotes a staging version after confirmation and reloads the registry', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const api = stub();
    mount(api);
    const models = screen.getByRole('region', { name: 'Models and versions' });
    const row = (await within(models).findByText('staging')).closest('tr');
    fireEvent.click(within(row).getByRole('button', { name: 'Promote' }));
    await waitFor(() => expect(api.stage).toHaveBeenCalledWith('recsys', 3, 'production'));
    await waitFor(() => expect(api.models).toHaveBeenCalledTimes(2));
    expect((await within(models).findByRole('status')).textContent).toBe('recsys 3 → production (version 2 archived)');
  });

  it('offers no way to archive the production version, and rolls back to the previous one', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const api = stub();
    mount(api);
    const models = screen.getByRole('region', { name: 'Models and versions' });
    const prod = (await within(models).findByText('production')).closest('tr');
    expect(within(prod).queryAllByRole('button')).toHaveLength(0);
    fireEvent.click(within(models).getByRole('button', { name: 'Roll back to 1' }));
    await waitFor(() => expect(api.stage).toHaveBeenCalledWith('recsys', 1, 'production'));
  });

  it('shows a refused stage change with the server’s reason and changes nothing', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const api = stub({ stage: vi.fn(async () => { throw new ApiError(409, 'conflict', 'a production version leaves production only when another version is promoted'); }) });
    mount(api);
    const models = screen.getByRole('region', { name: 'Models and versions' });
    const row = (await within(models).findByText('staging')).closest('tr');
    fireEvent.click(within(row).getByRole('button', { name: 'Archive' }));
    expect((await within(models).findByRole('alert')).textContent).toMatch(/another version is promoted/);
    expect(api.models).toHaveBeenCalledTimes(1);
  });

  it('asks before a stage change and does nothing when told no', async () => {
    vi.spyOn(window, 'confirm').mockReturnValue(false);
    const api = stub();
    mount(api);
    const row = (await screen.findByText('staging')).closest('tr');
    fireEvent.click(within(row).getByRole('button', { name: 'Promote' }));
    expect(api.stage).not.toHaveBeenCalled();
  });

  it('asks the daemons to reload and says what they serve now', async () => {
    const api = stub();
    mount(api);
    const svc = screen.getByRole('region', { name: /Service/ });
    await within(svc).findByText('ready');
    fireEvent.click(within(svc).getByRole('button', { name: 'Reload models' }));
    expect((await within(svc).findByText(/^Reloaded:/)).textContent).toBe('Reloaded: recsys 3, dialog 1');
    await waitFor(() => expect(api.ready).toHaveBeenCalledTimes(2));
  });

  it('warns a non-admin that the panels will be refused', async () => {
    mount(stub({ claims: { sub: '2', role: 'user' } }));
    expect((await screen.findByText(/not an administrator/)).getAttribute('role')).toBe('status');
  });
});
