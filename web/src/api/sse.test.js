import { describe, expect, it } from 'vitest';
import { createSseParser, readSse } from './sse.js';

function collect(chunks) {
  const events = [];
  const p = createSseParser((e) => events.push(e));
  chunks.forEach((c) => p.push(c));
  p.end();
  return events;
}

function streamOf(chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) { chunks.forEach((x) => c.enqueue(enc.encode(x))); c.close(); },
  });
}

describe('SSE parser', () => {
  it('dispatches named events with their data on a blank line', () => {
    expect(collect(['event: token\ndata: {"text":"Hi"}\n\n'])).toEqual([
      { event: 'token', data: '{"text":"Hi"}', id: null },
    ]);
  });

  it('reassembles events split across chunks at any byte', () => {
    const whole = 'event: token\ndata: {"text":"a"}\n\nevent: token\ndata: {"text":"b"}\n\nevent: done\ndata: {"message_id":3}\n\n';
    for (let cut = 1; cut < whole.length; cut++) {
      const ev = collect([whole.slice(0, cut), whole.slice(cut)]);
      expect(ev.map((e) => e.event)).toEqual(['token', 'token', 'done']);
      expect(JSON.parse(ev[1].data).text).toBe('b');
    }
  });

  it('accepts CRLF and lone CR line endings, even with CRLF split across chunks', () => {
    expect(collect(['event: token\r\ndata: x\r', '\n\r\n']).map((e) => e.data)).toEqual(['x']);
    expect(collect(['data: y\r\r']).map((e) => e.data)).toEqual(['y']);
  });

  it('joins multi-line data with newlines and strips only one leading space', () => {
    const [e] = collect(['data:  two spaces\ndata:none\n\n']);
    expect(e.data).toBe(' two spaces\nnone');
    expect(e.event).toBe('message');
  });

  it('ignores comments, unknown fields and events without data', () => {
    expect(collect([': keep-alive\n\nretry: 5\nfoo: bar\nevent: ping\n\n'])).toEqual([]);
  });

  it('drops an unterminated last event when the stream ends', () => {
    expect(collect(['event: token\ndata: cut'])).toEqual([]);
  });

  it('keeps multi-byte UTF-8 split across chunks intact', async () => {
    const bytes = new TextEncoder().encode('event: token\ndata: {"text":"Amélie 🎬"}\n\n');
    const stream = new ReadableStream({
      start(c) { for (const b of bytes) c.enqueue(new Uint8Array([b])); c.close(); },
    });
    const got = [];
    await readSse(stream, (e) => got.push(JSON.parse(e.data).text));
    expect(got).toEqual(['Amélie 🎬']);
  });

  it('rejects with AbortError when the signal fires mid-stream', async () => {
    const ctl = new AbortController();
    const enc = new TextEncoder();
    const stream = new ReadableStream({
      start(c) { c.enqueue(enc.encode('event: token\ndata: {"text":"a"}\n\n')); }, // never closes
    });
    const got = [];
    const p = readSse(stream, (e) => { got.push(e); ctl.abort(); }, ctl.signal);
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(got).toHaveLength(1);
  });

  it('reads a whole stream to the end', async () => {
    const got = [];
    await readSse(streamOf(['data: 1\n\n', 'data: 2\n\n']), (e) => got.push(e.data));
    expect(got).toEqual(['1', '2']);
  });
});
