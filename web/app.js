// The page's shell: settings (form and URL, with the CLI's flag names), downloads, the
// progress bar, the epoch table, curves, the predictions grid, the confusion matrix and
// the drawing canvas. Everything numerical happens in Rust (mnist_gpu.js / .wasm).
// Lines prefixed "mnist-gpu: " on the console are what automated checks read.
import init, { Session, request_stop, clear_stop, check_settings, model_defaults } from './mnist_gpu.js';

const $ = (id) => document.getElementById(id);
// Each line also kept in window.mnistGpuLog, for WebDriver (which cannot read the console).
window.mnistGpuLog = [];
const log = (line) => { console.log(`mnist-gpu: ${line}`); window.mnistGpuLog.push(line); };
const FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
  't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'];
let session = null;
let history = [];
// Whether WebGPU has an adapter here (asked once, before any training).
let webgpu = false;

// --- settings ---------------------------------------------------------------------
function applyQuery() {
  const query = new URLSearchParams(location.search);
  for (const input of $('settings').elements) {
    if (!input.name || !query.has(input.name)) continue;
    const value = query.get(input.name);
    if (input.type === 'checkbox') input.checked = value !== '0' && value !== 'false';
    else {
      // A value the list lacks stays what the URL says, for the checks to refuse by name.
      if (input.tagName === 'SELECT' && ![...input.options].some((o) => o.value === value)) {
        input.add(new Option(value));
      }
      input.value = value;
    }
  }
  applyModel(query);
  return query.get('autostart') === '1';
}

// The model's own defaults (Rust's, as the CLI's): its epochs and batch size, and the
// hidden field only for the MLP. Fields the URL sets are kept (a convnet given hidden
// widths is then refused by the checks, as on the command line).
function applyModel(query) {
  const f = $('settings').elements;
  const given = (name) => query !== null && query.has(name);
  const convnet = f.model.value === 'convnet';
  f.hidden.disabled = convnet && !given('hidden');
  if (!given('hidden')) f.hidden.value = convnet ? '' : '128';
  let defaults;
  try { defaults = model_defaults(f.model.value); } catch { return; } // refused at Train
  const [epochs, batch] = defaults;
  if (!given('epochs')) f.epochs.value = epochs;
  if (!given('batch-size')) f['batch-size'].value = batch;
}

// Every value as typed: Rust checks them with the command line's rules (a number's text
// is kept, so a seed above 2^53 stays exact and a refusal quotes what was typed).
function readSettings() {
  const f = $('settings').elements;
  const text = (name) => f[name].value;
  return {
    model: text('model'), epochs: text('epochs'), 'batch-size': text('batch-size'), lr: text('lr'),
    hidden: text('hidden'), seed: text('seed'), 'raw-pixels': f['raw-pixels'].checked,
    augment: f.augment.checked,
    'train-limit': text('train-limit'), 'test-limit': text('test-limit'),
    cpu: f['cpu-fallback'].checked || !webgpu,
  };
}

// --- data ---------------------------------------------------------------------------
async function download() {
  const sizes = await Promise.all(FILES.map(async (name) => {
    const head = await fetch(`mnist/${name}`, { method: 'HEAD' });
    return Number(head.headers.get('content-length')) || 0;
  }));
  const total = sizes.reduce((a, b) => a + b, 0);
  let received = 0;
  const files = [];
  for (const name of FILES) {
    const response = await fetch(`mnist/${name}`);
    if (!response.ok) throw new Error(`downloading ${name}: HTTP ${response.status}`);
    const reader = response.body.getReader();
    const parts = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      received += value.length;
      $('download-bar').value = total ? received / total : 0;
      $('download-text').textContent = `MNIST ${(received / 1e6).toFixed(1)} / ${(total / 1e6).toFixed(1)} MB`;
    }
    files.push(new Uint8Array(await new Blob(parts).arrayBuffer()));
  }
  return files;
}

// --- training -----------------------------------------------------------------------
function fmtTime(s) { return s < 60 ? `${s.toFixed(1)}s` : `${Math.floor(s / 60)}m${Math.round(s % 60)}s`; }

function progressLine(epoch, started) {
  let first = null;
  return (done, total, loss, accuracy) => {
    const now = performance.now() / 1000;
    if (first === null) first = [now, done];
    const rate = done > first[1] ? (now - first[0]) / (done - first[1]) : null;
    const eta = rate === null ? '?' : fmtTime(rate * (total - done));
    const bar = '━'.repeat(Math.round(20 * done / total)).padEnd(20, '─');
    $('progress').textContent = `Epoch ${epoch}: ${done}/${total} ${bar} ${fmtTime(now - started)} ETA ${eta}`
      + ` - loss: ${loss.toFixed(4)} - accuracy: ${accuracy.toFixed(4)}`;
  };
}

// Train the session's remaining epochs; Train stays disabled meanwhile (Stop, then
// Resume, continues the same run with the settings it started with).
async function runEpochs() {
  clear_stop();
  $('train').disabled = true;
  $('stop').disabled = false;
  $('resume').disabled = true;
  try {
    while (session.epochs_done() < session.epochs()) {
      const epoch = session.epochs_done() + 1;
      const line = await session.train_epoch(progressLine(epoch, performance.now() / 1000));
      if (line === null) { // stopped part-way: Resume continues this epoch
        $('progress').textContent += '  (stopped; Resume continues with the settings this run started with)';
        log(`stopped in epoch ${epoch}`);
        $('resume').disabled = false;
        return;
      }
      log(line);
      const record = JSON.parse(line);
      history.push(record);
      addRow(record);
      drawCurves();
    }
    showResults();
    log(`done ${JSON.stringify(history[history.length - 1])}`);
  } catch (error) {
    showError(error);
  } finally {
    $('stop').disabled = true;
    $('train').disabled = false;
  }
}

function showError(error) {
  const span = document.createElement('span');
  span.className = 'error';
  span.textContent = String(error);
  $('progress').replaceChildren(span);
  log(`error ${String(error)}`);
}

async function start(event) {
  if (event) event.preventDefault();
  const settings = readSettings();
  try {
    check_settings(JSON.stringify(settings));
  } catch (error) { // refused before anything is downloaded or trained
    showError(error);
    return;
  }
  $('train').disabled = true;
  $('resume').disabled = true;
  try {
    const files = await download();
    let note = '';
    try {
      session = await Session.create(files, JSON.stringify(settings));
    } catch (error) {
      if (settings.cpu) throw error;
      // An adapter without what the kernels need: the CPU path, as the CLI's fallback.
      note = ` — WebGPU failed (${error}), so the CPU path (wasm, one thread) trains instead`;
      session = await Session.create(files, JSON.stringify({ ...settings, cpu: true }));
    }
    if (!webgpu) note = ' — WebGPU is unavailable here, so the CPU path (wasm, one thread) trains instead';
    const where = session.device();
    const notes = session.notes();
    $('device').textContent = `Training on ${where}${note}${notes ? ` (${notes})` : ''}`;
    log(`device ${where}`);
    if (notes) log(notes);
    history = [];
    $('epochs').tBodies[0].innerHTML = '';
    $('results').hidden = true;
    $('save').disabled = true;
  } catch (error) {
    showError(error);
    $('train').disabled = false;
    return;
  }
  await runEpochs();
}

// --- tables and pictures ------------------------------------------------------------
function addRow(r) {
  const row = $('epochs').tBodies[0].insertRow();
  for (const v of [r.epoch, r.loss.toFixed(4), r.accuracy.toFixed(4), r.val_loss.toFixed(4),
    r.val_accuracy.toFixed(4), r.seconds.toFixed(2)]) row.insertCell().textContent = v;
}

function drawCurves() {
  const ctx = $('curves').getContext('2d');
  const { width, height } = ctx.canvas;
  ctx.clearRect(0, 0, width, height);
  const panels = [['loss', 'val_loss'], ['accuracy', 'val_accuracy']];
  panels.forEach(([train, val], p) => {
    const x0 = p * width / 2 + 40, w = width / 2 - 60, y0 = 20, h = height - 50;
    const values = history.flatMap((r) => [r[train], r[val]]);
    const lo = Math.min(...values), hi = Math.max(...values) || 1;
    const x = (i) => x0 + (history.length > 1 ? i * w / (history.length - 1) : w / 2);
    const y = (v) => y0 + h - (hi > lo ? (v - lo) / (hi - lo) : 0.5) * h;
    ctx.strokeStyle = '#999'; ctx.strokeRect(x0, y0, w, h);
    ctx.fillStyle = '#000'; ctx.fillText(`${train} (blue: training, orange: validation)`, x0, 12);
    ctx.fillText(hi.toFixed(3), x0 - 38, y0 + 8); ctx.fillText(lo.toFixed(3), x0 - 38, y0 + h);
    [[train, '#1f77b4'], [val, '#ff7f0e']].forEach(([key, colour]) => {
      ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.beginPath();
      history.forEach((r, i) => (i ? ctx.lineTo(x(i), y(r[key])) : ctx.moveTo(x(i), y(r[key]))));
      ctx.stroke();
      history.forEach((r, i) => ctx.fillRect(x(i) - 2, y(r[key]) - 2, 4, 4));
    });
  });
}

function showResults() {
  const images = session.test_images(100), labels = session.test_labels();
  const predictions = session.predictions();
  const ctx = $('grid').getContext('2d');
  ctx.clearRect(0, 0, 560, 620);
  const count = images.length / 784;
  for (let i = 0; i < count; i++) {
    const picture = ctx.createImageData(28, 28);
    for (let p = 0; p < 784; p++) {
      const v = 255 - images[i * 784 + p];
      picture.data.set([v, v, v, 255], 4 * p);
    }
    const x = (i % 10) * 56, y = Math.floor(i / 10) * 62;
    ctx.putImageData(picture, x + 14, y);
    const wrong = predictions[i] !== labels[i];
    ctx.fillStyle = wrong ? '#d00' : '#000';
    ctx.fillText(wrong ? `${predictions[i]} (${labels[i]})` : `${predictions[i]}`, x + 14, y + 40);
  }
  drawConfusion(labels, predictions);
  $('results').hidden = false;
  $('save').disabled = false;
}

function drawConfusion(labels, predictions) {
  const m = Array.from({ length: 10 }, () => new Array(10).fill(0));
  predictions.forEach((p, i) => { m[labels[i]][p] += 1; });
  const table = $('confusion');
  table.innerHTML = '<tr><th></th>' + [...Array(10).keys()].map((d) => `<th>${d}</th>`).join('') + '</tr>';
  m.forEach((row, t) => {
    table.innerHTML += `<tr><th>${t}</th>` + row.map((v, p) => `<td class="${p === t ? 'diag' : ''}">${v}</td>`).join('') + '</tr>';
  });
}

// --- drawing, model files -----------------------------------------------------------
function setUpDrawing() {
  const canvas = $('draw'), ctx = canvas.getContext('2d');
  const clear = () => { ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, 280, 280); $('top3').textContent = ''; };
  clear();
  let drawing = false;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.addEventListener('pointerdown', (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...at(e)); });
  canvas.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    ctx.lineWidth = 18; ctx.lineCap = 'round'; ctx.lineJoin = 'round'; ctx.strokeStyle = '#000';
    ctx.lineTo(...at(e)); ctx.stroke();
    predictDrawing();
  });
  for (const end of ['pointerup', 'pointerleave']) canvas.addEventListener(end, () => { drawing = false; predictDrawing(); });
  $('clear').addEventListener('click', clear);
}

let predicting = false, again = false;
async function predictDrawing() {
  if (!session) {
    $('top3').textContent = 'No model yet: train one (Train) or load one made by the CLI first.';
    return;
  }
  if (predicting) { again = true; return; } // run once more when this one ends
  predicting = true;
  try {
    const blob = await new Promise((resolve) => $('draw').toBlob(resolve, 'image/png'));
    const top3 = JSON.parse(session.predict_png(new Uint8Array(await blob.arrayBuffer())));
    $('top3').textContent = top3.map(([d, p]) => `${d}: ${(100 * p).toFixed(1)}%`).join('  ');
    log(`drawn ${JSON.stringify(top3)}`);
  } catch (error) {
    $('top3').textContent = String(error);
  }
  predicting = false;
  if (again) { again = false; predictDrawing(); }
}

function saveModel() {
  const bytes = session.model_file();
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  link.download = 'model.safetensors';
  link.click();
  window.mnistGpuModel = bytes; // for WebDriver, which cannot reach the download folder
}

async function loadModel(event) {
  const file = event.target.files[0];
  if (!file) return;
  try {
    if (!session) {
      // Nothing trained yet: the test set (the form's test limit) to evaluate it on.
      $('top3').textContent = `loading ${file.name}…`;
      const settings = { ...readSettings(), epochs: '1', 'train-limit': '1', cpu: true };
      session = await Session.create(await download(), JSON.stringify(settings));
    }
    const result = JSON.parse(await session.load_model(new Uint8Array(await file.arrayBuffer()), file.name));
    $('top3').textContent = `loaded ${file.name}: test accuracy ${(100 * result.accuracy).toFixed(2)}%`
      + ` on ${result.samples} samples (predictions below are its own)`;
    log(`loaded ${JSON.stringify(result)}`);
    showResults();
  } catch (error) {
    $('top3').textContent = `${file.name}: ${error}`;
    log(`refused ${String(error)}`);
  }
}

// Whether WebGPU gives an adapter (`no-webgpu=1` in the URL hides it, to try the page
// as a browser without WebGPU shows it).
async function findWebGpu() {
  if (new URLSearchParams(location.search).get('no-webgpu') === '1') return false;
  if (!navigator.gpu) return false;
  try {
    return (await navigator.gpu.requestAdapter()) !== null;
  } catch {
    return false;
  }
}

await init();
const autostart = applyQuery();
webgpu = await findWebGpu();
log(`webgpu ${webgpu}`);
$('device').textContent = webgpu
  ? 'WebGPU is available.'
  : 'WebGPU is unavailable in this browser (Chrome/Edge 113+, Safari 26+, or Chromium with --enable-unsafe-webgpu); training will run on the CPU path compiled to wasm.';
$('settings').addEventListener('submit', start);
$('settings').elements.model.addEventListener('change', () => applyModel(null));
$('stop').addEventListener('click', () => request_stop());
$('resume').addEventListener('click', () => runEpochs());
$('save').addEventListener('click', saveModel);
$('load').addEventListener('change', loadModel);
setUpDrawing();
if (autostart) start();
