// The chat page: API key → models → a conversation of images, questions and answers.
// All rendering goes through textContent / DOM nodes (never innerHTML): answers are untrusted text.

import { ApiError, chat, classify, listModels, streamChat } from './api.js';
import { labelNamer, probabilityChart } from './chart.js';
import { ACCEPT, dataUrl, readImage, releaseImage, thumbnail } from './images.js';

const KEY_STORAGE = 'eyeops.apiKey'; // sessionStorage only: gone when the tab closes
// Families whose chat takes text only (the LLM family refuses images); the rest read them.
const TEXT_ONLY_FAMILIES = new Set(['llm']);
const TASKS = {
  classify: { label: 'Classify the images', needs: 'classify' },
  ask: { label: 'Ask a question', needs: 'chat' },
  report: { label: 'Write a report', needs: 'report' },
  generate: { label: 'Generate or reconstruct an image', needs: 'generate_image' },
};
// What a turn without typed text asked for, in the history sent to chat models (a classify turn
// stays a user turn, so the classifier's answer that follows reads as its reply).
const DEFAULT_PROMPTS = {
  classify: 'Classify the attached image(s).',
  report: 'Write a concise ophthalmology report for the attached image(s): findings, impression and '
    + 'recommendation.',
};
const MAX_TOKENS = 256;
// A model's image tasks (card.tasks entries answering generate_image) as the picker names them;
// the ones listed in IMAGE_INPUT_TASKS transform the attached image, text_to_image draws from text.
const IMAGE_TASK_LABELS = {
  generation: 'as instructed',
  reconstruction: 'reconstruct the image',
  super_resolution: 'super-resolve a low-resolution image',
  modality_conversion: 'convert fundus photo → angiogram',
  text_to_image: 'draw from the description',
};
const IMAGE_INPUT_TASKS = new Set(['reconstruction', 'super_resolution', 'modality_conversion']);

const $ = (id) => document.getElementById(id);
const state = { key: null, models: [], images: [], turns: [], pending: [], busy: null };

// --- small DOM helpers -----------------------------------------------------------------------
function node(tag, className, text) {
  const n = document.createElement(tag);
  if (className) n.className = className;
  if (text !== undefined) n.textContent = text;
  return n;
}

function showAlert(message) {
  const alert = $('alert');
  alert.textContent = message;
  alert.hidden = !message;
}

function modelCard() {
  return state.models.find((m) => m.id === $('model').value) || null;
}

/** "name · version 3 · @champion · recipe r" — which model answered (from the API's own stamp). */
function stampText(stamp) {
  const version = stamp.version === null || stamp.version === undefined || stamp.version === 'local'
    ? 'unregistered (local directory)' : `version ${stamp.version}`;
  const alias = stamp.alias ? ` · @${stamp.alias}` : '';
  return `Answered by ${stamp.name} · ${version}${alias} · recipe ${stamp.recipe}`;
}

// --- API key ---------------------------------------------------------------------------------
function askForKey(message) {
  $('key-panel').hidden = false;
  $('app').hidden = true;
  showAlert(message || '');
  $('api-key').value = '';
  $('api-key').focus();
}

async function connect(key) {
  state.key = key;
  $('key-status').textContent = 'Connecting…';
  try {
    state.models = await listModels(key);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) sessionStorage.removeItem(KEY_STORAGE);
    $('key-status').textContent = '';
    askForKey(err.message);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $('key-status').textContent = '';
  showAlert('');
  $('key-panel').hidden = true;
  $('app').hidden = false;
  fillModels();
  $('prompt').focus();
}

// --- models and tasks ------------------------------------------------------------------------
function fillModels() {
  const select = $('model');
  const previous = select.value;
  select.replaceChildren();
  for (const m of state.models) {
    const version = m.version === null ? 'local' : `v${m.version}`;
    const alias = m.alias ? ` @${m.alias}` : '';
    const option = node('option', '', `${m.name} · ${version}${alias} · ${m.recipe}`);
    option.value = m.id;
    select.append(option);
  }
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  if (!state.models.length) showAlert('The gateway serves no models.');
  onModelChange();
}

function onModelChange() {
  const card = modelCard();
  const info = $('model-info');
  if (!card) {
    info.textContent = '';
    return;
  }
  const reads = card.capabilities.includes('chat')
    ? (TEXT_ONLY_FAMILIES.has(card.family) ? ' · reads text only' : ' · reads images') : '';
  info.textContent = `Family ${card.family} · can ${card.capabilities.join(', ')}${reads}`
    + (card.labels.length ? ` · labels ${card.labels.join(' ')}` : '');
  let firstEnabled = null;
  for (const [task, spec] of Object.entries(TASKS)) {
    const radio = document.querySelector(`input[name="task"][value="${task}"]`);
    radio.disabled = !card.capabilities.includes(spec.needs);
    radio.closest('label').classList.toggle('unavailable', radio.disabled);
    if (!radio.disabled && !firstEnabled) firstEnabled = radio;
  }
  const current = document.querySelector('input[name="task"]:checked');
  if ((!current || current.disabled) && firstEnabled) firstEnabled.checked = true;
  fillImageTasks(card);
}

/** The image-task picker: one option per task of the model that answers with an image. */
function fillImageTasks(card) {
  const select = $('image-task');
  const previous = select.value;
  const tasks = Object.entries(card.tasks || {}).filter(([, c]) => c === 'generate_image').map(([t]) => t);
  select.replaceChildren(...tasks.map((t) => {
    const option = node('option', '', IMAGE_TASK_LABELS[t] || t);
    option.value = t;
    return option;
  }));
  if (tasks.includes(previous)) select.value = previous;
  const label = $('image-task-label');
  label.hidden = tasks.length < 2;
  label.style.display = label.hidden ? 'none' : ''; // '.tasks label' sets display, which beats [hidden]
}

/** The model task an image turn runs: the picker's choice, else the model's one image task. */
function imageTaskOf(card) {
  const picked = $('image-task').value;
  return picked && (card.tasks || {})[picked] === 'generate_image' ? picked : modelTask(card, 'generate_image');
}

const currentTask = () => (document.querySelector('input[name="task"]:checked') || {}).value;

// --- attachments -----------------------------------------------------------------------------
// Picks and drops are read one after another, so images keep the order the user added them in.
let adding = Promise.resolve();
function addFiles(files) {
  adding = adding.then(() => readFiles(files));
  return adding;
}

async function readFiles(files) {
  const problems = [];
  for (const file of files) {
    const { image, error } = await readImage(file);
    if (error) problems.push(error);
    else state.pending.push(image);
  }
  showAlert(problems.join('\n'));
  renderPending();
}

function renderPending() {
  const list = $('pending');
  list.replaceChildren();
  state.pending.forEach((image, i) => {
    const item = node('li');
    item.append(thumbnail(image, state.images.length + i + 1));
    const remove = node('button', 'remove', '×');
    remove.type = 'button';
    remove.setAttribute('aria-label', `Remove ${image.name}`);
    remove.addEventListener('click', () => {
      state.pending.splice(state.pending.indexOf(image), 1);
      releaseImage(image);
      renderPending();
    });
    item.append(remove);
    list.append(item);
  });
  $('pending-count').textContent = state.pending.length
    ? `${state.pending.length} image(s) will be sent with your next message.` : '';
}

// --- conversation ----------------------------------------------------------------------------
function addArticle(role, heading) {
  const article = node('article', `turn ${role}`);
  article.append(node('h2', 'who', heading));
  $('conversation').append(article);
  article.scrollIntoView({ block: 'end' });
  return article;
}

function renderUserTurn(turn) {
  const article = addArticle('user', `You · ${TASKS[turn.task].label}`);
  if (turn.images.length) {
    const strip = node('div', 'thumbs');
    for (const image of turn.images) strip.append(thumbnail(image, state.images.indexOf(image) + 1));
    article.append(strip);
  }
  if (turn.text) article.append(node('p', 'text', turn.text));
}

function renderError(article, err) {
  article.classList.add('error');
  const p = node('p', 'error-text', err.message);
  p.setAttribute('role', 'alert');
  article.append(p);
  if (err.requestId) article.append(node('p', 'meta', `Request id ${err.requestId}`));
}

/** Chat history for the API: every turn so far, images as data: URLs where the model reads them. */
async function chatMessages(card) {
  const withImages = !TEXT_ONLY_FAMILIES.has(card.family);
  const messages = [];
  for (const turn of state.turns) {
    if (turn.role === 'assistant') {
      if (turn.text) messages.push({ role: 'assistant', content: turn.text });
      continue;
    }
    const text = turn.text || DEFAULT_PROMPTS[turn.task] || '';
    if (!withImages || !turn.images.length) {
      if (text) messages.push({ role: 'user', content: text });
      continue;
    }
    const parts = [];
    for (const image of turn.images) parts.push({ type: 'image_url', image_url: { url: await dataUrl(image) } });
    if (text) parts.push({ type: 'text', text });
    messages.push({ role: 'user', content: parts });
  }
  return messages;
}

async function runClassify(card, turn, article, signal) {
  // This turn's images, else the most recent ones of the conversation.
  const images = turn.images.length ? turn.images : lastImages();
  const response = await classify(state.key, card.id, images, signal);
  const name = labelNamer(card.labels);
  response.results.forEach((item, i) => {
    const index = state.images.indexOf(images[i]) + 1;
    article.append(probabilityChart(item, { title: `Image ${index}: ${images[i].name}`, name }));
  });
  article.append(node('p', 'stamp', stampText(response.model)));
  // Kept as text so a chat model asked next can see what the classifier said.
  return response.results.map((item, i) => `Classifier ${response.model.name} on ${images[i].name}: `
    + (item.out_of_distribution ? `no findings, the image is ${item.message}`
      : (item.findings.length ? `findings ${item.findings.join(', ')}` : 'no finding above threshold')
      + ` (top: ${item.top.map((t) => `${t.label} ${t.probability.toFixed(2)}`).join(', ')})`)).join('\n');
}

function lastImages() {
  for (let i = state.turns.length - 1; i >= 0; i -= 1) {
    if (state.turns[i].role === 'user' && state.turns[i].images.length) return state.turns[i].images;
  }
  return [];
}

async function runChat(card, article, signal) {
  const hasImages = state.images.length > 0;
  if (hasImages && TEXT_ONLY_FAMILIES.has(card.family)) {
    article.append(node('p', 'meta', `${card.name} reads text only: the images of this chat are not sent to it.`));
  }
  const text = node('div', 'text streaming');
  text.setAttribute('aria-busy', 'true');
  article.append(text);
  const messages = await chatMessages(card);
  let answer = '';
  let fingerprint = '';
  let finishReason = null;
  for await (const piece of streamChat(state.key, { model: card.id, messages, max_tokens: MAX_TOKENS }, signal)) {
    if (piece.done) {
      finishReason = piece.finishReason;
      fingerprint = piece.fingerprint || fingerprint;
      break;
    }
    answer += piece.content;
    fingerprint = piece.fingerprint;
    text.textContent = answer;
  }
  text.classList.remove('streaming');
  text.removeAttribute('aria-busy');
  if (!answer.trim()) text.textContent = '(The model returned an empty answer.)';
  showInlineImages(text, answer);
  // system_fingerprint is "name/version/recipe-hash": the version of the model that really answered.
  const [name, version] = fingerprint.split('/');
  article.append(node('p', 'stamp', stampText({ ...card, name: name || card.name, version: version || card.version })));
  if (finishReason === 'length') article.append(node('p', 'meta', `Stopped at ${MAX_TOKENS} tokens.`));
  return answer;
}

/** The model's own task (card.tasks: name → capability) that produces ``needs``, if it declares tasks. */
function modelTask(card, needs) {
  const found = Object.entries(card.tasks || {}).find(([, capability]) => capability === needs);
  return found ? found[0] : null;
}

/** An image task (e.g. HealthGPT generation): this turn's image (else the last one) + text, no streaming. */
async function runImageTask(card, modelTaskName, turn, article, signal) {
  const images = modelTaskName === 'text_to_image' ? []
    : (turn.images.length ? turn.images : lastImages()).slice(-1);
  const content = [];
  for (const image of images) content.push({ type: 'image_url', image_url: { url: await dataUrl(image) } });
  if (turn.text) content.push({ type: 'text', text: turn.text });
  const request = { model: card.id, messages: [{ role: 'user', content }], eyeops_task: modelTaskName };
  const response = await chat(state.key, request, signal);
  const answer = response.choices[0].message.content;
  const parts = typeof answer === 'string' ? [{ type: 'text', text: answer }] : answer;
  const text = node('div', 'text', parts.filter((p) => p.type === 'text').map((p) => p.text).join('\n'));
  article.append(text);
  parts.filter((p) => p.type === 'image_url' && p.image_url.url.startsWith('data:image/')).forEach((p, i) => {
    const img = node('img', 'generated');
    img.src = p.image_url.url;
    img.alt = `Generated image ${i + 1}`;
    article.append(img);
  });
  article.append(node('p', 'stamp', stampText(response.eyeops_model)));
  return text.textContent;
}

/** Image outputs (data:image/... URLs in the answer, e.g. Markdown images) drawn inline. */
function showInlineImages(container, answer) {
  const found = answer.match(/data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+/g) || [];
  if (!found.length) return;
  container.textContent = answer.replace(/!?\[[^\]]*\]\((data:image[^)]*)\)|data:image\/[^\s)]+/g, '').trim();
  found.forEach((src, i) => {
    const img = node('img', 'generated');
    img.src = src;
    img.alt = `Generated image ${i + 1}`;
    container.after(img);
  });
}

async function send(event) {
  if (event) event.preventDefault();
  if (state.busy) return;
  const card = modelCard();
  const task = currentTask();
  if (!card || !task) return;
  const text = $('prompt').value.trim();
  const turnImages = state.pending.splice(0);
  if (task === 'classify' && !turnImages.length && !lastImages().length) {
    state.pending.push(...turnImages);
    showAlert('Attach at least one image to classify.');
    return;
  }
  const imageTask = task === 'generate' ? imageTaskOf(card) : null;
  if (IMAGE_INPUT_TASKS.has(imageTask) && !turnImages.length && !lastImages().length) {
    state.pending.push(...turnImages);
    showAlert('Attach the image to transform first.');
    return;
  }
  if ((task === 'ask' || (task === 'generate' && !IMAGE_INPUT_TASKS.has(imageTask))) && !text) {
    state.pending.push(...turnImages);
    showAlert(task === 'ask' ? 'Type a question first.' : 'Describe the image to generate first.');
    return;
  }
  showAlert('');
  state.images.push(...turnImages);
  const turn = { role: 'user', task, text, images: turnImages };
  state.turns.push(turn);
  renderUserTurn(turn);
  $('prompt').value = '';
  renderPending();

  const article = addArticle('assistant', card.name);
  const controller = new AbortController();
  state.busy = controller;
  setBusy(true);
  const reply = { role: 'assistant', task, text: '' };
  try {
    if (task === 'classify') reply.text = await runClassify(card, turn, article, controller.signal);
    else if (imageTask) reply.text = await runImageTask(card, imageTask, turn, article, controller.signal);
    else reply.text = await runChat(card, article, controller.signal);
    state.turns.push(reply);
  } catch (err) {
    const partial = article.querySelector('.text');
    if (partial) partial.classList.remove('streaming');
    renderError(article, err.name === 'AbortError' ? new Error('Stopped.') : err);
  } finally {
    state.busy = null;
    setBusy(false);
    article.scrollIntoView({ block: 'end' });
    $('prompt').focus();
  }
}

function setBusy(busy) {
  $('send').disabled = busy;
  $('stop').hidden = !busy;
  $('conversation').setAttribute('aria-busy', String(busy));
}

function newChat() {
  if (state.busy) state.busy.abort();
  for (const image of [...state.images, ...state.pending]) releaseImage(image);
  state.images = [];
  state.pending = [];
  state.turns = [];
  $('conversation').replaceChildren();
  $('prompt').value = '';
  showAlert('');
  renderPending();
  $('prompt').focus();
}

// --- wiring ----------------------------------------------------------------------------------
function wire() {
  $('files').accept = ACCEPT;
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    if (key) connect(key);
  });
  $('change-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORAGE);
    newChat();
    askForKey('');
  });
  $('new-chat').addEventListener('click', newChat);
  $('model').addEventListener('change', onModelChange);
  $('composer').addEventListener('submit', send);
  $('stop').addEventListener('click', () => state.busy && state.busy.abort());
  $('prompt').addEventListener('keydown', (e) => {
    // Enter sends (Shift+Enter is a new line); Ctrl/Cmd+Enter sends too.
    if (e.key === 'Enter' && !e.isComposing && (!e.shiftKey || e.ctrlKey || e.metaKey)) send(e);
  });
  $('files').addEventListener('change', async (e) => {
    await addFiles([...e.target.files]);
    e.target.value = '';
  });
  const drop = $('drop');
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const type of ['dragleave', 'drop']) drop.addEventListener(type, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    addFiles([...e.dataTransfer.files]);
  });
  const stored = sessionStorage.getItem(KEY_STORAGE);
  if (stored) connect(stored);
  else askForKey('');
}

wire();
