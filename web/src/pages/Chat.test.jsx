// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import { AuthProvider } from '../auth.jsx';
import { Router, match, useRouter } from '../router.jsx';
import { ChatPage, endNote } from './Chat.jsx';
import { ApiError } from '../api/client.js';

afterEach(cleanup);

function stub(over) {
  return {
    claims: { sub: '5', role: 'user' },
    onAuthChange: () => () => {},
    restore: () => Promise.resolve(true),
    conversations: vi.fn(async () => ({ conversations: [{ id: 4, title: 'Heists' }] })),
    conversation: vi.fn(async () => ({ conversation: { id: 4 }, messages: [] })),
    feedback: vi.fn(async () => ({})),
    ...over,
  };
}

const mount = (api) => render(<Router initial={{ path: '/chat/4', search: '' }}><AuthProvider api={api}><ChatPage id="4" /></AuthProvider></Router>);

describe('ChatPage', () => {
  it('streams tokens into the reply, then offers feedback on it', async () => {
    const api = stub({
      sendMessage: vi.fn(async (id, content, { onToken }) => {
        onToken('Try '); onToken('Heat.');
        return { message_id: 77, finish_reason: 'stop' };
      }),
    });
    mount(api);
    await screen.findByText('Heists');
    fireEvent.change(screen.getByLabelText('Message'), { target: { value: 'a heist film' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    await screen.findByText('Try Heat.');
    expect(api.sendMessage.mock.calls[0].slice(0, 2)).toEqual(['4', 'a heist film']);
    // the reply is done (feedback buttons shown) only after the last token
    fireEvent.click(await screen.findByRole('button', { name: 'Good answer' }));
    await waitFor(() => expect(api.feedback).toHaveBeenCalledWith(77, 1));
    await waitFor(() => expect(screen.getByRole('button', { name: 'Good answer' }).getAttribute('aria-pressed')).toBe('true'));
  });

  it('Stop aborts the streaming request and keeps the partial reply', async () => {
    let signal;
    const api = stub({
      sendMessage: vi.fn((id, content, opts) => new Promise((resolve, reject) => {
        signal = opts.signal;
        opts.onToken('Partial');
        signal.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
      })),
    });
    mount(api);
    await screen.findByText('Heists');
    fireEvent.change(screen.getByLabelText('Message'), { target: { value: 'long answer please' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    const stop = await screen.findByRole('button', { name: '■ Stop' });
    fireEvent.click(stop);
    expect(signal.aborted).toBe(true);
    await screen.findByRole('button', { name: 'Send' });
    expect(screen.getByText('Partial')).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('Stop asks the server to cancel the generation as well as closing the stream', async () => {
    let signal;
    const api = stub({
      cancelConversation: vi.fn(async () => { throw new ApiError(409, 'conflict', 'nothing running'); }),
      sendMessage: vi.fn((id, content, opts) => new Promise((resolve, reject) => {
        signal = opts.signal;
        opts.onToken('Partial');
        signal.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
      })),
    });
    mount(api);
    await screen.findByText('Heists');
    fireEvent.change(screen.getByLabelText('Message'), { target: { value: 'long answer please' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    fireEvent.click(await screen.findByRole('button', { name: '■ Stop' }));
    expect(signal.aborted).toBe(true);
    await waitFor(() => expect(api.cancelConversation).toHaveBeenCalledWith('4'));
    await screen.findByRole('button', { name: 'Send' });
    // a refused cancel (the reply had just ended) is not an error to show
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('without the conversation API, chats in the tab through /v1/chat/completions with the history', async () => {
    const missing = async () => { throw new ApiError(404, 'not_found', 'no such endpoint'); };
    const api = stub({
      conversations: vi.fn(missing), conversation: vi.fn(missing), sendMessage: vi.fn(),
      chatCompletion: vi.fn(async (msgs, { onToken }) => { onToken(`reply ${msgs.length}`); return { finish_reason: 'stop' }; }),
    });
    mount(api);
    await screen.findByText(/this chat lives in this tab only/);
    for (const text of ['first', 'second']) {
      fireEvent.change(screen.getByLabelText('Message'), { target: { value: text } });
      fireEvent.click(await screen.findByRole('button', { name: 'Send' }));
      await screen.findByText(text === 'first' ? 'reply 1' : 'reply 3');
    }
    expect(api.chatCompletion.mock.calls[1][0]).toEqual([
      { role: 'user', content: 'first' }, { role: 'assistant', content: 'reply 1' }, { role: 'user', content: 'second' }]);
    expect(api.sendMessage).not.toHaveBeenCalled();
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('a first message from /chat creates the conversation and keeps the streamed reply on screen', async () => {
    window.history.replaceState(null, '', '/chat');
    let finish;
    const api = stub({
      conversations: vi.fn(async () => ({ conversations: [] })),
      createConversation: vi.fn(async () => ({ conversation: { id: 'c9' } })),
      conversation: vi.fn(async () => ({ conversation: { id: 'c9' }, messages: [] })),
      sendMessage: vi.fn((id, content, { onToken }) => new Promise((resolve) => {
        onToken('Rififi, ');
        finish = () => { onToken('then Heat.'); resolve({ message_id: 12, finish_reason: 'stop' }); };
      })),
    });
    // the page gets its id from the URL, as in App's routes
    function Routed() {
      const { path } = useRouter();
      const m = match('/chat/:id', path);
      return <ChatPage id={m ? m.id : undefined} />;
    }
    render(<Router><AuthProvider api={api}><Routed /></AuthProvider></Router>);
    fireEvent.change(await screen.findByLabelText('Message'), { target: { value: 'a heist film' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    await screen.findByText('Rififi,');
    await waitFor(() => expect(window.location.pathname).toBe('/chat/c9'));
    expect(api.sendMessage.mock.calls[0][0]).toBe('c9');
    finish();
    await screen.findByText('Rififi, then Heat.');
    expect(screen.getByText('a heist film')).toBeTruthy();
    // the new conversation was not read back over the stream
    expect(api.conversation).not.toHaveBeenCalled();
    await screen.findByRole('button', { name: 'Good answer' });
  });

  it('after Stop, shows the partial reply as the server saved it, with feedback', async () => {
    const saved = { conversation: { id: 4 }, messages: [
      { id: 30, role: 'user', content: 'long answer please' },
      { id: 31, role: 'assistant', content: 'Partial', status: 'partial', finish_reason: 'cancel', feedback: null }] };
    let reads = 0;
    const api = stub({
      // the first read is the page load; then the reply is not stored yet once
      conversation: vi.fn(async () => {
        reads += 1;
        return reads <= 2 ? { conversation: { id: 4 }, messages: reads === 1 ? [] : [saved.messages[0]] } : saved;
      }),
      sendMessage: vi.fn((id, content, opts) => new Promise((resolve, reject) => {
        opts.onToken('Partial');
        opts.signal.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
      })),
    });
    mount(api);
    await screen.findByText('Heists');
    fireEvent.change(screen.getByLabelText('Message'), { target: { value: 'long answer please' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    fireEvent.click(await screen.findByRole('button', { name: '■ Stop' }));
    await screen.findByRole('button', { name: 'Send' });
    await screen.findByText('(stopped: the partial reply is saved)');
    fireEvent.click(screen.getByRole('button', { name: 'Bad answer' }));
    await waitFor(() => expect(api.feedback).toHaveBeenCalledWith(31, -1));
    expect(reads).toBe(3);
  });

  it('says so when a finished reply has no words', async () => {
    const api = stub({
      sendMessage: vi.fn(async () => ({ message_id: 8, finish_reason: 'stop' })),
    });
    mount(api);
    await screen.findByText('Heists');
    fireEvent.change(screen.getByLabelText('Message'), { target: { value: 'hello' } });
    fireEvent.click(screen.getByRole('button', { name: 'Send' }));
    await screen.findByText(/no words this time/);
  });

  it('names how a reply ended', () => {
    expect(endNote({ status: 'partial', id: 3 })).toBe('stopped: the partial reply is saved');
    expect(endNote({ finish_reason: 'stopped' })).toBe('stopped');
    expect(endNote({ finish_reason: 'cancelled' })).toBe('stopped');
    expect(endNote({ finish_reason: 'length' })).toBe('cut at the length limit');
    expect(endNote({ status: 'complete', finish_reason: 'stop' })).toBeNull();
    expect(endNote({ status: 'error', finish_reason: 'error' })).toBe('the reply failed part-way');
  });
});
