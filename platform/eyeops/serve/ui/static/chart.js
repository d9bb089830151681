// Per-label probabilities as an inline SVG bar chart (no library), plus the top findings in words.

const SVG = 'http://www.w3.org/2000/svg';
let charts = 0; // ids for aria-labelledby (crypto.randomUUID needs https, hospitals often serve http)
// ODIR-5K's one-letter codes, spelled out for readers; any other label set is shown as sent.
const ODIR_NAMES = {
  N: 'Normal', D: 'Diabetic retinopathy', G: 'Glaucoma', C: 'Cataract',
  A: 'Age-related macular degeneration', H: 'Hypertensive retinopathy', M: 'Myopia', O: 'Other abnormality',
};

/** "G — Glaucoma" for an ODIR code when the whole label set is ODIR's, else the label itself. */
export function labelNamer(labels) {
  const odir = labels.length > 0 && labels.every((l) => l in ODIR_NAMES);
  return (label) => (odir ? `${label} — ${ODIR_NAMES[label]}` : label);
}

export const percent = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1)}%`;

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A <figure> with one bar per label (in the model's label order) and the findings listed; for an
 * image the model flags as out of distribution, its verdict instead of findings, bars dimmed.
 * Bars carry data-label / data-probability so a reader (or a test) can check them against the API.
 */
export function probabilityChart(item, { title, name }) {
  const entries = Object.entries(item.probabilities);
  const findings = new Set(item.findings);
  const figure = document.createElement('figure');
  figure.className = 'chart';

  // The label column fits the longest name (≈9.4 px a bold character at the 15 px chart font).
  const longest = Math.max(...entries.map(([label]) => name(label).length), 4);
  const row = 30, labelW = Math.min(380, Math.round(longest * 9.4) + 16), barW = 330, valueW = 90;
  const top = 8, axis = 22;
  const width = labelW + barW + valueW, height = top + entries.length * row + axis;
  const titleId = `chart-${++charts}`;
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`, width: '100%', role: 'img', 'aria-labelledby': titleId,
    class: 'bars', preserveAspectRatio: 'xMinYMin meet',
  });
  const summary = entries.map(([label, p]) => `${name(label)} ${percent(p)}`).join(', ');
  svg.append(el('title', { id: titleId }, `${title}: ${summary}`));

  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const x = labelW + tick * barW;
    svg.append(el('line', { x1: x, x2: x, y1: top - 4, y2: top + entries.length * row, class: 'grid' }));
    svg.append(el('text', { x, y: height - 6, 'text-anchor': 'middle', class: 'tick' }, `${tick * 100}%`));
  }
  entries.forEach(([label, p], i) => {
    const y = top + i * row;
    const found = findings.has(label);
    const group = el('g', { class: found ? 'finding' : 'label' });
    group.append(el('text', { x: labelW - 8, y: y + row / 2 + 5, 'text-anchor': 'end', class: 'name' },
      name(label)));
    group.append(el('rect', {
      x: labelW, y: y + 5, height: row - 10, width: Math.max(0, Math.min(1, p)) * barW, rx: 3,
      class: 'bar', 'data-label': label, 'data-probability': p,
    }));
    group.append(el('text', { x: labelW + barW + 8, y: y + row / 2 + 5, class: 'value' },
      `${percent(p)}${found ? ' ●' : ''}`));
    svg.append(group);
  });

  const caption = document.createElement('figcaption');
  const heading = document.createElement('strong');
  heading.textContent = title;
  caption.append(heading);
  const list = document.createElement('p');
  list.className = 'findings';
  if (item.out_of_distribution) {
    // The model's screen says the image is unlike its training images: its scores mean nothing here.
    figure.classList.add('ood');
    list.classList.add('ood');
    list.textContent = `This image is ${item.message || 'outside what this model was trained on'}: `
      + 'no findings are given, and the bars below are not meaningful for it '
      + `(out-of-distribution score ${item.ood_score.toFixed(3)}, threshold ${item.ood_threshold.toFixed(3)}).`;
  } else if (item.findings.length) {
    list.textContent = `Findings (● at or above the model's threshold): ${item.findings
      .map((l) => `${name(l)} ${percent(item.probabilities[l])}`).join('; ')}`;
  } else {
    list.textContent = `No label reached the model's threshold. Most likely: ${item.top
      .map((t) => `${name(t.label)} ${percent(t.probability)}`).join('; ')}`;
  }
  caption.append(list);
  figure.append(caption, svg);
  return figure;
}
