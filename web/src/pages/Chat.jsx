import { useEffect, useRef, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { Link, useRouter } from '../router.jsx';
import { ErrorNote, Spinner } from '../components/common.jsx';
import { Pencil, ThumbDown, ThumbUp, Trash } from '../components/Icons.jsx';

const listOf = (r, key) => (Array.isArray(r) ? r : (r && r[key]) || []);

// What a finished reply's finish_reason / status says, in words.
export function endNote(m) {
  if (m.status === 'partial' || ['stopped', 'cancel', 'cancelled'].includes(m.finish_reason)) {
    return m.id ? 'stopped: the partial reply is saved' : 'stopped';
  }
  if (m.status === 'error' || m.finish_reason === 'error') return 'the reply failed part-way';
  if (m.finish_reason === 'length') return 'cut at the length limit';
  if (m.finish_reason && !['stop', 'eof'].includes(m.finish_reason)) return m.finish_reason;
  return null;
}

function Message({ m, onFeedback }) {
  const note = m.role === 'assistant' && !m.streaming ? endNote(m) : null;
  const empty = m.role === 'assistant' && !m.streaming && !m.content;
  return (
    <li className={`msg ${m.role}`}>
      <span className="sr-only">{m.role === 'user' ? 'You said' : 'cinematch said'}:</span>
      <div className="bubble">
        {empty ? <em className="muted">{!note ? '(no words this time; try asking again)' : m.status === 'error' || m.finish_reason === 'error' ? '(no reply)' : '(nothing yet)'}</em> : m.content}
        {m.streaming ? <span className="caret" aria-hidden="true">▍</span> : null}
      </div>
      {m.role === 'assistant' && !m.streaming && (m.id || note) ? (
        <div className="feedback" role="group" aria-label="Was this helpful?">
          {m.id ? (
            <>
              <button className={`icon${m.feedback === 1 ? ' on' : ''}`} aria-pressed={m.feedback === 1} aria-label="Good answer" onClick={() => onFeedback(m, 1)}><ThumbUp /></button>
              <button className={`icon${m.feedback === -1 ? ' on' : ''}`} aria-pressed={m.feedback === -1} aria-label="Bad answer" onClick={() => onFeedback(m, -1)}><ThumbDown /></button>
            </>
          ) : null}
          {note ? <span className="muted small end-note">({note})</span> : null}
        </div>
      ) : null}
    </li>
  );
}

// After a stop, the server stores the partial reply once it notices the
// closed connection (usually within milliseconds): read the conversation
// back until its last message is that reply, so it gets its id (feedback)
// and its saved text.  Gives up quietly after `tries`.
export async function fetchAfterStop(api, id, { tries = 8, wait = 150 } = {}) {
  for (let i = 0; i < tries; i++) {
    try {
      const r = await api.conversation(id);
      const ms = listOf(r, 'messages');
      const last = ms[ms.length - 1];
      if (last && last.role === 'assistant') return ms;
    } catch { /* try again */ }
    await new Promise((res) => setTimeout(res, wait));
  }
  return null;
}

export function ChatPage({ id }) {
  const { api, user } = useAuth();
  const { navigate } = useRouter();
  const [convs, setConvs] = useState(null);
  const [listError, setListError] = useState(null);
  const [messages, setMessages] = useState([]);
  const [error, setError] = useState(null);
  const [draft, setDraft] = useState('');
  const [streaming, setStreaming] = useState(false);
  const ctl = useRef(null);
  const end = useRef(null);
  // the conversation send() just created: navigating to it must not clear
  // (or reload over) the messages being streamed into it
  const fresh = useRef(null);
  const sent = useRef(null);   // the latest send()'s controller
  const streamingIn = useRef(null);   // the conversation being answered

  const loadList = () => api.conversations({ limit: 50 }).then((r) => setConvs(listOf(r, 'conversations')), setListError);
  useEffect(() => { if (user) loadList(); }, [api, user]); // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(() => {
    if (id && fresh.current === String(id)) return;
    fresh.current = null;
    setMessages([]); setError(null);
    if (!id || !user) return;
    let live = true;
    api.conversation(id).then((r) => live && setMessages(listOf(r, 'messages')), (e) => live && setError(e));
    return () => { live = false; };
  }, [api, id, user]);
  useEffect(() => () => ctl.current && ctl.current.abort(), []);
  useEffect(() => { end.current?.scrollIntoView?.({ block: 'end' }); }, [messages]);

  if (!user) return <p className="note"><Link to="/login">Log in</Link> to chat about movies.</p>;

  // Without the conversation API (404), the chat runs in this tab only and
  // streams from the OpenAI-compatible /v1/chat/completions.
  const local = Boolean(listError && listError.missing);

  async function newChat(forSend = false) {
    if (local) { setMessages([]); setError(null); return null; }
    try {
      const r = await api.createConversation();
      const c = r.conversation || r;
      await loadList();
      if (forSend === true) fresh.current = String(c.id);
      navigate(`/chat/${c.id}`);
      return c.id;
    } catch (e) { setListError(e); return null; }
  }
  async function rename(c) {
    const title = window.prompt('Rename conversation', c.title || '');
    if (!title) return;
    try { await api.renameConversation(c.id, title); loadList(); } catch (e) { setListError(e); }
  }
  async function remove(c) {
    if (!window.confirm(`Delete "${c.title || 'this conversation'}"?`)) return;
    try { await api.deleteConversation(c.id); await loadList(); if (String(c.id) === String(id)) navigate('/chat'); } catch (e) { setListError(e); }
  }
  async function exportAs(format) {
    try {
      const blob = await api.exportConversation(id, format);
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = `conversation-${id}.${format}`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } catch (e) { setError(e); }
  }
  async function feedback(m, rating) {
    try {
      await api.feedback(m.id, rating);
      setMessages((ms) => ms.map((x) => (x === m ? { ...x, feedback: rating } : x)));
    } catch (e) { setError(e); }
  }

  // Stop: the server is asked to stop generating (it stores the partial
  // reply), and the stream is closed as well, which alone also stops it:
  // a cancel request that fails changes nothing.
  function stop() {
    const c = ctl.current;
    if (!c) return;
    const cid = streamingIn.current;
    if (cid && api.cancelConversation) {
      Promise.resolve().then(() => api.cancelConversation(cid)).catch(() => {});
    }
    c.abort();
  }

  async function send(e) {
    e.preventDefault();
    const content = draft.trim();
    if (!content || streaming) return;
    let cid = id;
    if (!cid && !local) { cid = await newChat(true); if (!cid) return; }
    const history = messages.filter((m) => !m.streaming && m.content).map((m) => ({ role: m.role, content: m.content }));
    setDraft(''); setError(null); setStreaming(true);
    const controller = new AbortController();
    ctl.current = controller;
    sent.current = controller;
    streamingIn.current = local ? null : cid;
    const reply = { role: 'assistant', content: '', streaming: true };
    setMessages((ms) => [...ms, { role: 'user', content }, reply]);
    const update = (patch) => setMessages((ms) => ms.map((x) => (x.streaming ? { ...x, ...patch(x) } : x)));
    try {
      const onToken = (t) => update((x) => ({ content: x.content + t }));
      const done = local
        ? await api.chatCompletion([...history, { role: 'user', content }], { signal: controller.signal, onToken })
        : await api.sendMessage(cid, content, { signal: controller.signal, onToken });
      update(() => ({ streaming: false, id: done.message_id, finish_reason: done.finish_reason }));
    } catch (err) {
      const stopped = err.name === 'AbortError';
      update(() => ({ streaming: false, finish_reason: stopped ? 'stopped' : 'error' }));
      if (!stopped) setError(err);
    } finally {
      setStreaming(false);
      ctl.current = null;
    }
    if (local) return;
    loadList();
    if (controller.signal.aborted) {
      // the partial reply as the server saved it (with its id, for feedback),
      // unless another message was sent meanwhile
      const saved = await fetchAfterStop(api, cid);
      if (saved && ctl.current === null && sent.current === controller) setMessages(saved);
    }
  }

  return (
    <div className="chat">
      <aside className="conv-list" aria-label="Conversations">
        <button className="btn primary wide" onClick={newChat}>+ New chat</button>
        {local ? (
          <p className="note" role="status">Saved conversations are not available on this server yet: this chat lives in this tab only.</p>
        ) : <ErrorNote error={listError} what="Chat" />}
        {!convs && !listError ? <Spinner /> : null}
        <ul>
          {(convs || []).map((c) => (
            <li key={c.id} className={String(c.id) === String(id) ? 'on' : ''}>
              <Link to={`/chat/${c.id}`}>{c.title || 'Untitled'}</Link>
              <span className="conv-actions">
                <button className="icon" aria-label={`Rename ${c.title || 'conversation'}`} onClick={() => rename(c)}><Pencil /></button>
                <button className="icon" aria-label={`Delete ${c.title || 'conversation'}`} onClick={() => remove(c)}><Trash /></button>
              </span>
            </li>
          ))}
        </ul>
      </aside>
      <section className="conv" aria-label="Messages">
        {id && !local ? (
          <div className="conv-tools">
            <span className="muted small">Export:</span>
            <button className="btn small" onClick={() => exportAs('md')}>Markdown</button>
            <button className="btn small" onClick={() => exportAs('json')}>JSON</button>
          </div>
        ) : null}
        <ol className="messages" aria-live="polite" aria-busy={streaming}>
          {messages.length === 0 ? <li className="note">Ask for a movie: “a heist film with a twist, 90s”.</li> : null}
          {messages.map((m, i) => <Message key={m.id || i} m={m} onFeedback={feedback} />)}
          <li ref={end} aria-hidden="true" />
        </ol>
        <ErrorNote error={error} what="Chat" />
        <form className="composer" onSubmit={send}>
          <label htmlFor="composer" className="sr-only">Message</label>
          <textarea id="composer" rows={2} value={draft} placeholder="Ask about movies…"
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => { if (e.key === 'Enter' && !e.shiftKey) send(e); }} />
          {streaming ? <button type="button" className="btn stop" onClick={stop}>■ Stop</button>
            : <button type="submit" className="btn primary" disabled={!draft.trim()}>Send</button>}
        </form>
      </section>
    </div>
  );
}
