// Server-sent events, parsed from a fetch() body (EventSource cannot send an
// Authorization header or a POST body).  Follows the WHATWG event-stream
// rules: lines end in \n, \r\n or \r; "field: value" with one optional space
// after the colon; "data" lines join with \n; a blank line dispatches; lines
// starting with ":" are comments; an event with no data is not dispatched.

export function createSseParser(onEvent) {
  let buf = '';
  let event = '';
  let data = [];
  let id = null;
  let sawCR = false;

  function dispatch() {
    if (data.length > 0) {
      onEvent({ event: event || 'message', data: data.join('\n'), id });
    }
    event = '';
    data = [];
  }

  function line(l) {
    if (l === '') { dispatch(); return; }
    if (l[0] === ':') return;
    const c = l.indexOf(':');
    let field = l, value = '';
    if (c >= 0) {
      field = l.slice(0, c);
      value = l.slice(c + 1);
      if (value[0] === ' ') value = value.slice(1);
    }
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
    // "retry" and unknown fields are ignored: we do not reconnect.
  }

  return {
    push(chunk) {
      buf += chunk;
      let start = 0;
      for (let i = 0; i < buf.length; i++) {
        const ch = buf[i];
        if (ch === '\n' && sawCR) { sawCR = false; start = i + 1; continue; }
        sawCR = false;
        if (ch === '\r' || ch === '\n') {
          line(buf.slice(start, i));
          sawCR = ch === '\r';
          start = i + 1;
        }
      }
      buf = buf.slice(start);
    },
    // The stream ended: an unterminated last event is dropped, per the spec.
    end() { buf = ''; event = ''; data = []; },
  };
}

// Read a ReadableStream<Uint8Array> to its end, calling onEvent per event.
// Resolves when the stream ends; rejects with an AbortError when signal fires.
export async function readSse(stream, onEvent, signal) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const parser = createSseParser(onEvent);
  const onAbort = () => { reader.cancel().catch(() => {}); };
  if (signal) {
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  }
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
    parser.push(decoder.decode());
    parser.end();
  } finally {
    if (signal) signal.removeEventListener('abort', onAbort);
  }
  if (signal && signal.aborted) {
    throw new DOMException('The stream was stopped', 'AbortError');
  }
}
