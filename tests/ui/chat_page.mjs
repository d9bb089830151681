// Drives the gateway's /ui page in the system Chromium and records what a user would see.
// Run by tests/ui/test_chat_page.py (which asserts on the JSON this writes); config in UI_TEST_CONFIG.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.env.UI_TEST_CONFIG);
const out = {
  external: [], pageErrors: [], screenshots: [],
};
const shot = async (page, name) => {
  const file = path.join(cfg.outDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  out.screenshots.push(file);
};
const texts = (page, selector) => page.$$eval(selector, (nodes) => nodes.map((n) => n.textContent));

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eyeops-ui-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: cfg.chromium,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
context.setDefaultTimeout(90_000);
// Everything the page loads must come from the gateway (air-gapped hospital networks).
context.on('request', (r) => {
  const url = r.url();
  if (!url.startsWith(cfg.url) && !url.startsWith('data:') && !url.startsWith('blob:')) out.external.push(url);
});

async function connect(page, key) {
  await page.goto(`${cfg.url}/ui`);
  await page.waitForSelector('#key-panel:not([hidden])');
  await page.getByLabel('API key', { exact: true }).fill(key);
  await page.getByLabel('API key', { exact: true }).press('Enter');
}

async function dropFile(page, name, mime, b64) {
  const transfer = await page.evaluateHandle(([n, m, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], n, { type: m }));
    return dt;
  }, [name, mime, b64]);
  await page.dispatchEvent('#drop', 'dragenter', { dataTransfer: transfer });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: transfer });
}

try {
  // --- 1. connect, pick the classifier, attach images (file picker + drag-drop), classify -------
  const page = await context.newPage();
  page.on('pageerror', (e) => out.pageErrors.push(String(e)));
  out.ui = { status: (await page.goto(`${cfg.url}/ui`)).status(), finalUrl: page.url() };
  await connect(page, cfg.key);
  await page.waitForSelector('#app:not([hidden])');
  out.models = await texts(page, '#model option');
  await page.getByLabel('Model', { exact: true }).selectOption(cfg.classifier);
  out.classifyTasks = await page.$$eval('input[name="task"]', (r) => r.map((x) => [x.value, x.disabled, x.checked]));

  await page.setInputFiles('#files', cfg.notImage);
  // files are read asynchronously: wait for the verdict (or the timeout, and the test says what showed)
  await page.waitForFunction(() => document.getElementById('alert').textContent.trim() !== '', null, { timeout: 10000 })
    .catch(() => {});
  out.notImageAlert = await page.textContent('#alert');
  await page.setInputFiles('#files', cfg.retina);
  await page.waitForFunction(() => document.querySelectorAll('#pending li').length === 1);
  await dropFile(page, path.basename(cfg.tiff), 'image/tiff', fs.readFileSync(cfg.tiff).toString('base64'));
  await page.waitForFunction(() => document.querySelectorAll('#pending li').length === 2);
  out.pending = await texts(page, '#pending figcaption');

  const classified = page.waitForResponse((r) => r.url().endsWith('/v1/classify'));
  await page.getByLabel('Question or instructions').press('Control+Enter');
  const classifyResponse = await classified;
  out.classifyStatus = classifyResponse.status();
  out.classifyApi = await classifyResponse.json();
  await page.waitForSelector('.turn.assistant .stamp');
  out.charts = await page.$$eval('.turn.assistant figure.chart', (figs) => figs.map((f) => ({
    title: f.querySelector('figcaption strong').textContent,
    findings: f.querySelector('.findings').textContent,
    svgTitle: f.querySelector('svg title').textContent,
    bars: [...f.querySelectorAll('rect.bar')].map((r) => ({
      label: r.dataset.label, probability: Number(r.dataset.probability), width: Number(r.getAttribute('width')),
    })),
  })));
  out.classifyStamp = await page.textContent('.turn.assistant .stamp');
  out.userTurnImages = await page.$$eval('.turn.user .thumb', (t) => t.length);
  await shot(page, 'classify');

  // --- 2. ask the chat model a question (keyboard submit), watch the answer stream in ----------
  await page.getByLabel('Model', { exact: true }).selectOption(cfg.chat);
  out.chatTasks = await page.$$eval('input[name="task"]', (r) => r.map((x) => [x.value, x.disabled, x.checked]));
  await page.evaluate(() => {
    // Every text the answer element shows, in order: proof that it grew piece by piece.
    window.streamed = [];
    new MutationObserver(() => {
      const el = document.querySelector('.turn.assistant:last-child .text.streaming');
      if (el && el.textContent !== window.streamed.at(-1)) window.streamed.push(el.textContent);
    }).observe(document.getElementById('conversation'), { subtree: true, childList: true, characterData: true });
  });
  await page.getByLabel('Question or instructions').fill(cfg.question);
  const chatRequest = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
  const chatResponse = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await page.getByLabel('Question or instructions').press('Enter');
  out.chatRequest = (await chatRequest).postDataJSON();
  const response = await chatResponse;
  out.chatStatus = response.status();
  out.chatContentType = response.headers()['content-type'];
  await page.waitForFunction(() => document.querySelectorAll('.turn.assistant .stamp').length === 2);
  out.sse = await response.text();
  out.streamed = await page.evaluate(() => window.streamed);
  out.answer = await page.textContent('.turn.assistant:last-child .text');
  out.chatStamp = await page.textContent('.turn.assistant:last-child .stamp');
  out.turns = await page.$$eval('.turn', (t) => t.map((x) => x.className));
  await shot(page, 'chat');
  await page.setViewportSize({ width: 768, height: 1024 });
  out.tabletOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot(page, 'chat-tablet');
  out.storage = await page.evaluate(() => ({
    session: sessionStorage.getItem('eyeops.apiKey'), local: localStorage.length,
  }));

  // --- 3. new chat clears images and turns ------------------------------------------------------
  await page.getByRole('button', { name: 'New chat' }).click();
  out.afterNewChat = await page.evaluate(() => ({
    turns: document.querySelectorAll('#conversation > *').length,
    pending: document.querySelectorAll('#pending li').length,
  }));

  // --- 3b. HealthGPT: pick "Generate image" and super-resolution, attach the photograph, send -----
  await page.getByLabel('Model', { exact: true }).selectOption(cfg.healthgpt);
  await page.check('input[name="task"][value="generate"]');
  out.imageTasks = await page.$$eval('input[name="task"]', (r) => r.map((x) => [x.value, x.disabled, x.checked]));
  out.imageTaskOptions = await page.$$eval('#image-task option', (o) => o.map((x) => [x.value, x.textContent]));
  out.imageTaskPickerVisible = await page.isVisible('#image-task');
  await page.getByLabel('Image task').selectOption('super_resolution');
  await page.setInputFiles('#files', cfg.retina);
  await page.waitForFunction(() => document.querySelectorAll('#pending li').length === 1);
  await page.getByLabel('Question or instructions').fill('Make this photograph sharp.');
  const imageRequest = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
  const imageResponse = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await page.getByRole('button', { name: 'Send' }).click();
  out.imageRequest = (await imageRequest).postDataJSON();
  const imageAnswer = await imageResponse;
  out.imageStatus = imageAnswer.status();
  out.imageApiTask = (await imageAnswer.json()).eyeops_task;
  await page.waitForSelector('.turn.assistant img.generated');
  await page.waitForFunction(() => document.querySelector('.turn.assistant img.generated').complete);
  out.generated = await page.$eval('.turn.assistant img.generated', (img) => ({
    prefix: img.src.slice(0, 22), width: img.naturalWidth, height: img.naturalHeight,
  }));
  out.imageStamp = await page.textContent('.turn.assistant:last-child .stamp');
  await shot(page, 'image-task');

  // --- 4. a new tab has no key; a wrong key is refused in words ---------------------------------
  const tab = await context.newPage();
  tab.on('pageerror', (e) => out.pageErrors.push(String(e)));
  await connect(tab, cfg.wrongKey);
  await tab.waitForFunction(() => document.getElementById('alert').textContent.length > 0);
  out.wrongKeyAlert = await tab.textContent('#alert');
  out.wrongKeyPanelVisible = await tab.isVisible('#key-panel');
  out.wrongKeyStored = await tab.evaluate(() => sessionStorage.getItem('eyeops.apiKey'));
  await shot(tab, 'wrong-key');

  // --- 5. a key without the classify scope: the 403 is shown in the conversation ----------------
  await tab.getByLabel('API key', { exact: true }).fill(cfg.chatKey);
  await tab.getByLabel('API key', { exact: true }).press('Enter');
  await tab.waitForSelector('#app:not([hidden])');
  await tab.getByLabel('Model', { exact: true }).selectOption(cfg.classifier);
  await tab.setInputFiles('#files', cfg.retina);
  await tab.getByRole('button', { name: 'Send' }).click();
  await tab.waitForSelector('.turn.assistant.error');
  out.forbiddenText = await tab.textContent('.turn.assistant.error .error-text');
  await shot(tab, 'forbidden');
} finally {
  fs.writeFileSync(path.join(cfg.outDir, 'result.json'), JSON.stringify(out, null, 1));
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
