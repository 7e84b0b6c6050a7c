// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { StarRating } from './StarRating.jsx';
import { ErrorNote } from './common.jsx';
import { LineChart } from './LineChart.jsx';
import { ApiError } from '../api/client.js';
import { AuthProvider } from '../auth.jsx';
import { Router } from '../router.jsx';
import { ForYouPage } from '../pages/ForYou.jsx';
import { listIn, summarizeMetrics } from '../pages/Admin.jsx';

afterEach(cleanup);

function stubApi(over = {}, claims = { sub: '5', role: 'user' }) {
  return {
    claims,
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(true),
    popular: vi.fn(async () => ({ source: 'popular', recommendations: [{ movie_id: 1, title: 'Heat (1995)' }] })),
    ...over,
  };
}

function renderWith(api, ui) {
  return render(<Router initial={{ path: '/', search: '' }}><AuthProvider api={api}>{ui}</AuthProvider></Router>);
}

describe('StarRating', () => {
  it('rates a half star when the left half of a star is clicked', () => {
    const onChange = vi.fn();
    render(<StarRating value={null} onChange={onChange} />);
    const star = document.querySelector('[data-star="4"]');
    star.getBoundingClientRect = () => ({ left: 100, width: 20, top: 0, height: 20, right: 120, bottom: 20 });
    fireEvent.click(star, { clientX: 105 });
    expect(onChange).toHaveBeenLastCalledWith(3.5);
    fireEvent.click(star, { clientX: 115 });
    expect(onChange).toHaveBeenLastCalledWith(4);
  });

  it('is a keyboard slider: arrows step by half a star within 0.5..5', () => {
    const onChange = vi.fn();
    render(<StarRating value={5} onChange={onChange} />);
    const slider = screen.getByRole('slider', { name: 'Your rating' });
    expect(slider).toHaveProperty('tabIndex', 0);
    expect(slider.getAttribute('aria-valuetext')).toBe('5 of 5 stars');
    fireEvent.keyDown(slider, { key: 'ArrowLeft' });
    expect(onChange).toHaveBeenLastCalledWith(4.5);
    fireEvent.keyDown(slider, { key: 'ArrowRight' }); // already 5: no change
    expect(onChange).toHaveBeenCalledTimes(1);
    fireEvent.keyDown(slider, { key: 'Home' });
    expect(onChange).toHaveBeenLastCalledWith(0.5);
  });

  it('shows half-filled stars for a half rating and ignores input when disabled', () => {
    const onChange = vi.fn();
    render(<StarRating value={2.5} onChange={onChange} disabled />);
    const cls = [...document.querySelectorAll('.star')].map((s) => s.className.split(' ')[1]);
    expect(cls).toEqual(['full', 'full', 'half', 'empty', 'empty']);
    fireEvent.keyDown(screen.getByRole('slider'), { key: 'ArrowRight' });
    expect(onChange).not.toHaveBeenCalled();
  });
});

describe('ErrorNote', () => {
  it('says a feature is not available when its endpoint answers 404', () => {
    render(<ErrorNote error={new ApiError(404, 'not_found', 'no such endpoint')} what="Chat" />);
    expect(screen.getByRole('status').textContent).toBe('Chat is not available on this server yet.');
  });

  it('shows the request id of a server error as an alert', () => {
    render(<ErrorNote error={new ApiError(500, 'internal', 'boom', { requestId: 'abc' })} />);
    expect(screen.getByRole('alert').textContent).toContain('request abc');
  });
});

describe('ForYouPage', () => {
  it('lists recommendations with "because you liked"', async () => {
    const api = stubApi({
      recommend: vi.fn(async () => ({ user_id: 5, model_version: 'v3', is_fallback: false, recommendations: [
        { movie_id: 2, title: 'Ronin (1998)', year: 1998, genres: ['Action'], score: 0.9, because: { movie_id: 1, title: 'Heat (1995)' } },
      ] })),
    });
    renderWith(api, <ForYouPage />);
    await screen.findByText('Ronin (1998)');
    const because = screen.getByText(/Because you liked/);
    expect(because.textContent).toBe('Because you liked Heat (1995)');
    expect(because.querySelector('a').getAttribute('href')).toBe('/movies/1');
    expect(api.recommend).toHaveBeenCalledWith({ k: 18, exclude_seen: true });
  });

  it('falls back to popular movies when recommendations fail', async () => {
    const api = stubApi({ recommend: vi.fn(async () => { throw new ApiError(503, 'unavailable', 'no model'); }) });
    renderWith(api, <ForYouPage />);
    await screen.findByText('Heat (1995)');
    expect(screen.getByText('Popular instead')).toBeTruthy();
    expect(screen.getByRole('alert').textContent).toMatch(/busy or starting/);
  });

  it('explains a fallback answer and shows popular movies to anonymous visitors', async () => {
    const api = stubApi({ recommend: vi.fn(async () => ({ is_fallback: true, fallback_reason: 'cold_start', recommendations: [{ movie_id: 3, title: 'Up (2009)' }] })) });
    renderWith(api, <ForYouPage />);
    await screen.findByText('Up (2009)');
    expect(screen.getByRole('status').textContent).toMatch(/popular picks \(cold start\)/);
    cleanup();
    const anon = stubApi({ recommend: vi.fn() }, null);
    renderWith(anon, <ForYouPage />);
    await screen.findByText('Heat (1995)');
    expect(anon.recommend).not.toHaveBeenCalled();
  });
});

describe('admin helpers', () => {
  it('finds the list in an admin response whatever its key', () => {
    expect(listIn({ runs: [1] }, 'runs')).toEqual([1]);
    expect(listIn({ total: 2, items: [1, 2] }, 'runs')).toEqual([1, 2]);
    expect(listIn(null)).toEqual([]);
  });

  it('sums metric samples by name and leaves histogram buckets out', () => {
    const s = summarizeMetrics([
      { name: 'a_total', labels: { c: '1' }, value: 2 }, { name: 'a_total', labels: { c: '2' }, value: 3 },
      { name: 'h_bucket', labels: { le: '1' }, value: 9 },
    ]);
    expect(s).toEqual([{ name: 'a_total', value: 5 }]);
  });

  it('draws a threshold line and one polyline per series', () => {
    const { container } = render(<LineChart title="PSI" series={[{ name: 'psi', points: [[1, 0.05], [2, 0.3]] }]}
      thresholds={[{ value: 0.25, label: 'significant' }]} />);
    expect(container.querySelectorAll('polyline')).toHaveLength(1);
    expect(container.querySelectorAll('line.threshold')).toHaveLength(1);
    expect(screen.getByRole('img').getAttribute('aria-label')).toBe('PSI: psi 2 points');
  });
});
