// The page's only way to the server: the public gateway API, exactly as applications call it.
// Paths are relative to the page (/ui/ → ../v1/...), so a gateway behind a path prefix still works.

const API_ROOT = new URL('../', document.baseURI);

// Words for the gateway's error codes; the server's own message is always shown as well.
const STATUS_WORDS = {
  400: 'The request was refused',
  401: 'Your API key was not accepted',
  403: 'Your API key is not allowed to do this',
  404: 'Not found',
  413: 'Too large for the server',
  415: 'Unsupported image format',
  422: 'The request was not understood',
  429: 'Too many requests — try again shortly',
  500: 'The server failed',
  503: 'The model is not ready yet',
  504: 'The model took too long to answer',
};

/** An error answer from the API, in words a reader can act on. */
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    const lead = STATUS_WORDS[status] || (status ? `HTTP ${status}` : 'The answer stopped with an error');
    super(`${lead}${status ? ` (${status} ${code})` : ` (${code})`}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
    this.requestId = requestId || '';
  }
}

function headers(key, extra = {}) {
  return { Authorization: `Bearer ${key}`, Accept: 'application/json', ...extra };
}

async function call(path, key, init = {}) {
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), { ...init, headers: headers(key, init.headers) });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network_error', `cannot reach the gateway (${err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** ApiError from a non-2xx response: our JSON error body, or whatever a proxy sent instead. */
async function errorOf(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    if (error && error.message) {
      return new ApiError(response.status, error.code || 'error', error.message, error.request_id);
    }
  } catch {
    // not our JSON shape: fall through to the status line
  }
  const reason = response.statusText || 'error';
  return new ApiError(response.status, 'http_error', `${reason}${text ? ` — ${text.slice(0, 200)}` : ''}`);
}

/** GET /v1/models → the model cards (name, version, alias, recipe, family, capabilities, labels). */
export async function listModels(key) {
  const body = await (await call('v1/models', key)).json();
  return body.data;
}

/** POST /v1/classify (multipart, one or several images) → {model, results}. */
export async function classify(key, model, images, signal) {
  const form = new FormData();
  form.append('model', model);
  for (const image of images) form.append('image', image.blob, image.name);
  return (await call('v1/classify', key, { method: 'POST', body: form, signal })).json();
}

/**
 * POST /v1/chat/completions without streaming (image-producing tasks) → the completion. Its
 * message content is a string, or content parts ({type: 'text'} / {type: 'image_url'}) with images.
 */
export async function chat(key, request, signal) {
  return (await call('v1/chat/completions', key, {
    method: 'POST',
    body: JSON.stringify({ ...request, stream: false }),
    headers: { 'Content-Type': 'application/json' },
    signal,
  })).json();
}

/**
 * POST /v1/chat/completions with stream=true; yields {content} pieces and finally
 * {done, finishReason, fingerprint}. An error event inside the stream becomes an ApiError.
 */
export async function* streamChat(key, request, signal) {
  const response = await call('v1/chat/completions', key, {
    method: 'POST',
    body: JSON.stringify({ ...request, stream: true }),
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    signal,
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let fingerprint = '';
  let finishReason = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    // SSE events end with a blank line; a partial event waits for the next read.
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).trimStart())
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') {
        yield { done: true, finishReason, fingerprint };
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        throw new ApiError(0, chunk.error.code, chunk.error.message, chunk.error.request_id);
      }
      fingerprint = chunk.system_fingerprint || fingerprint;
      for (const choice of chunk.choices || []) {
        if (choice.finish_reason) finishReason = choice.finish_reason;
        if (choice.delta && choice.delta.content) yield { content: choice.delta.content, fingerprint };
      }
    }
  }
  throw new ApiError(0, 'stream_cut', 'the connection closed before the answer was complete');
}
