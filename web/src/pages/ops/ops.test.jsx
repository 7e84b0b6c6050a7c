// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { ApiError } from '../../api/client.js';
import { Ingestions } from './Ingestions.jsx';
import { Usage, usageSeries, usageTable } from './Usage.jsx';
import { runSeries } from './Runs.jsx';
import { driftThresholds } from './Drift.jsx';
import { Models } from './Models.jsx';

afterEach(() => { cleanup(); vi.restoreAllMocks(); });

describe('Ingestions', () => {
  const batches = { batches: [
    { id: 8, kind: 'ratings', file_name: 'week2.csv', status: 'complete', rows_total: 10, rows_accepted: 7, rows_rejected: 3, started_at: '2026-11-22T00:00:00Z' },
    { id: 7, kind: 'movies', file_name: 'movies.csv', status: 'failed', error: 'bad header', rows_total: 0, rows_accepted: 0, rows_rejected: 0 }],
  next_cursor: null };

  it('opens a batch’s rejected lines and pages through them with the cursor', async () => {
    const api = {
      ingestions: vi.fn(async () => batches),
      ingestion: vi.fn(async (id, q) => (q.cursor === '4'
        ? { batch: { id }, rejects: [{ line_no: 9, raw_line: '1,2,7,3', reason: 'rating out of range' }], next_cursor: null }
        : { batch: { id }, rejects: [{ line_no: 2, raw_line: 'é,"', reason: 'too few fields' }, { line_no: 4, raw_line: '1,2,x,3', reason: 'rating is not a number' }], next_cursor: '4' })),
    };
    render(<Ingestions api={api} />);
    expect(await screen.findByText('bad header')).toBeTruthy();
    // a batch without rejects offers nothing to open
    expect(screen.getAllByRole('button', { name: 'Show rejects' })).toHaveLength(1);
    fireEvent.click(screen.getByRole('button', { name: 'Show rejects' }));
    const region = await screen.findByRole('region', { name: 'Rejected lines of batch 8' });
    await within(region).findByText('rating is not a number');
    expect(api.ingestion).toHaveBeenCalledWith(8, { limit: 50, cursor: undefined });
    fireEvent.click(within(region).getByRole('button', { name: 'More rejects' }));
    await within(region).findByText('rating out of range');
    expect(api.ingestion).toHaveBeenLastCalledWith(8, { limit: 50, cursor: '4' });
    expect(within(region).getAllByRole('row')).toHaveLength(4);     // header + 3
    expect(within(region).queryByRole('button', { name: 'More rejects' })).toBeNull();
    fireEvent.click(screen.getByRole('button', { name: 'Hide rejects' }));
    expect(screen.queryByRole('region', { name: 'Rejected lines of batch 8' })).toBeNull();
  });
});

describe('Usage', () => {
  const now = () => Date.parse('2026-11-25T12:00:00Z');
  const answer = {
    group_by: 'user', interval: 'day', groups: 3,
    rows: [
      { key: '1', label: 'a@example.com', bucket: '2026-11-24T00:00:00.000000Z', requests: 2, errors: 1, server_errors: 1, generations: 0, prompt_tokens: 0, completion_tokens: 0, tokens: 0 },
      { key: '1', label: 'a@example.com', bucket: '2026-11-25T00:00:00.000000Z', requests: 2, errors: 0, server_errors: 0, generations: 2, prompt_tokens: 22, completion_tokens: 33, tokens: 55 },
      { key: '2', label: 'b@example.com', bucket: '2026-11-25T00:00:00.000000Z', requests: 3, errors: 1, server_errors: 0, generations: 0, prompt_tokens: 0, completion_tokens: 0, tokens: 0 }],
    totals: { requests: 8, errors: 2, server_errors: 1, generations: 2, tokens: 55 },
  };

  it('asks for the last week per user by day, and shows totals, a chart and per-group sums', async () => {
    const api = { usage: vi.fn(async () => answer) };
    render(<Usage api={api} now={now} />);
    await screen.findByText('a@example.com', { selector: 'th' });
    expect(api.usage).toHaveBeenCalledWith({ from: '2026-11-18', to: '2026-11-26', group_by: 'user', interval: 'day' });
    const region = screen.getByRole('region', { name: 'Usage' });
    expect(region.textContent).toContain('Total: 8 requests, 2 errors (1 server), 2 generations, 55 tokens');
    expect(region.textContent).toContain('the 2 busiest of 3');
    within(region).getByRole('img', { name: 'Requests per day: a@example.com 2 points, b@example.com 1 points' });
    const a = within(region).getByText('a@example.com', { selector: 'th' }).closest('tr');
    expect([...a.querySelectorAll('td')].map((td) => td.textContent)).toEqual(['4', '1', '1', '2', '22', '33']);
  });

  it('sends the chosen range and grouping, and shows a refused range with the reason', async () => {
    const api = { usage: vi.fn(async (q) => {
      if (q.from > q.to) throw new ApiError(422, 'validation_failed', 'must be before to', { fields: { from: 'must be before to' } });
      return { ...answer, group_by: q.group_by, interval: null, rows: [{ key: null, requests: 4, errors: 0 }], totals: { requests: 4 } };
    }) };
    render(<Usage api={api} now={now} />);
    await screen.findByText('anonymous');
    fireEvent.change(screen.getByLabelText('Per'), { target: { value: 'api_key' } });
    fireEvent.change(screen.getByLabelText('Buckets'), { target: { value: '' } });
    fireEvent.click(screen.getByRole('button', { name: 'Show' }));
    await screen.findByText('no key (session)');
    expect(api.usage).toHaveBeenLastCalledWith({ from: '2026-11-18', to: '2026-11-26', group_by: 'api_key', interval: undefined });
    fireEvent.change(screen.getByLabelText('From'), { target: { value: '2026-12-01' } });
    fireEvent.click(screen.getByRole('button', { name: 'Show' }));
    expect((await screen.findByRole('alert')).textContent).toBe('from: must be before to');
  });

  it('says so when the server has no usage endpoint', async () => {
    render(<Usage api={{ usage: async () => { throw new ApiError(404, 'not_found', 'no such endpoint'); } }} now={now} />);
    expect((await screen.findByRole('alert')).textContent).toBe('Usage analytics is not available on this server yet.');
  });

  it('sums bucketed rows per group and keeps the busiest groups as series', () => {
    const t = usageTable(answer.rows);
    expect(t.map((r) => [r.key, r.requests, r.tokens])).toEqual([['1', 4, 55], ['2', 3, 0]]);
    expect(usageSeries(answer.rows, 1).map((s) => s.name)).toEqual(['a@example.com']);
    expect(usageSeries([{ key: '1', bucket: null, requests: 3 }])).toEqual([]);
  });
});

describe('chart data', () => {
  it('charts each metric of the succeeded runs, oldest first', () => {
    const s = runSeries([
      { status: 'succeeded', started_at: '2026-11-21T00:00:00Z', metrics: { rmse: 0.8, note: 'x' } },
      { status: 'failed', started_at: '2026-11-22T00:00:00Z', metrics: { rmse: 9 } },
      { status: 'succeeded', started_at: '2026-11-20T00:00:00Z', metrics: { rmse: 0.9, 'ndcg@10': 0.3 } }]);
    expect(s.map((x) => x.name)).toEqual(['rmse', 'ndcg@10']);
    expect(s[0].points.map((p) => p[1])).toEqual([0.9, 0.8]);
  });

  it('takes drift thresholds from the newest report that has them', () => {
    expect(driftThresholds([]).psi.map((t) => t.value)).toEqual([0.1, 0.25]);
    expect(driftThresholds([]).ks).toEqual([]);
    const t = driftThresholds([{ thresholds: {} }, { thresholds: { psi: 0.25, ks_pvalue: 0.05 } }]);
    expect(t.psi.map((x) => x.value)).toEqual([0.1, 0.25]);
    expect(t.ks.map((x) => x.value)).toEqual([0.05]);
  });
});

describe('Models', () => {
  it('opens a model’s version history with the run behind each version', async () => {
    const api = {
      models: vi.fn(async () => ({ models: [{ name: 'recsys', task: 'recsys', production_version: 1, rollback_version: null,
        versions: [{ version: 2, stage: 'staging', metrics: {} }, { version: 1, stage: 'production', metrics: {} }] }] })),
      versions: vi.fn(async () => ({ model: { name: 'recsys' }, versions: [
        { version: 2, stage: 'staging', run: { id: 7, triggered_by: 'drift', params: { factors: 64 }, train_rows: 90000, test_rows: 10000, duration_ms: 4200, gate_decision: 'rejected', gate_reason: 'ndcg@10 +0.4% < 1%' } },
        { version: 1, stage: 'production', run: null }] })),
    };
    render(<Models api={api} />);
    expect(screen.queryByRole('button', { name: 'Roll back to 1' })).toBeNull();
    fireEvent.click(await screen.findByRole('button', { name: 'Runs' }));
    const table = await screen.findByRole('table', { name: 'Training runs of recsys' });
    await within(table).findByText('rejected: ndcg@10 +0.4% < 1%');
    expect(api.versions).toHaveBeenCalledWith('recsys');
    expect(within(table).getByText('4.2 s')).toBeTruthy();
    expect(within(table).getByText('registered by hand (no training run)')).toBeTruthy();
  });
});
