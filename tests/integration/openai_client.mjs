// The official `openai` npm package against cinematch's /v1 base URL: one
// non-streaming and one streaming chat completion; prints what it got as
// one JSON line.  Run by test_chat_openai_npm.py from a temp dir where the
// package was installed:  node openai_client.mjs BASE_URL API_KEY
import OpenAI from 'openai';

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20000 });
const messages = [{ role: 'user', content: 'Where are you going?' }];

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);

const plain = await client.chat.completions.create({
  model: 'dialog', messages, max_tokens: 16, seed: 7,
});

const stream = await client.chat.completions.create({
  model: 'dialog', messages, max_tokens: 16, seed: 7, stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    text += c.delta?.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
}

let error = null;
try {
  await client.chat.completions.create({ model: 'dialog', messages, temperature: 5 });
} catch (e) {
  error = { status: e.status, name: e.constructor.name };
}

console.log(JSON.stringify({
  models: ids,
  plain: { id: plain.id, object: plain.object, content: plain.choices[0].message.content,
           finish: plain.choices[0].finish_reason, usage: plain.usage },
  stream: { text, finish, usage, chunks },
  error,
}));
