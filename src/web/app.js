// The evq dashboard: reads /api/..., draws the queues, workers and dead
// letters, and sends the changes (with the token in a header) as POSTs.
// Everything shown from a queue is set as text, never as HTML.
'use strict';

const POLL_MS = 2000;
const PAGE = 20;
const state = {
  queues: [], selected: null, offset: 0, deadSeen: null,
  workersPrev: null,
};

const $ = (sel, root = document) => root.querySelector(sel);

function status(text, error) {
  const s = $('#status');
  s.textContent = text;
  s.classList.toggle('error', !!error);
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: 'application/json' } });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function fmt(v, digits = 0) {
  if (v === null || v === undefined) return '–';
  return typeof v === 'number' ? v.toFixed(digits) : String(v);
}

function seconds(s) {
  if (typeof s !== 'number') return '–';
  if (s < 1e-3) return (s * 1e6).toFixed(0) + ' µs';
  if (s < 1) return (s * 1e3).toFixed(1) + ' ms';
  return s.toFixed(2) + ' s';
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function drawChart(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const w = 120, h = 28;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext('2d');
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const v = values.filter((x) => typeof x === 'number');
  if (v.length < 2) return;
  const max = Math.max(1, ...v);
  g.strokeStyle = '#2458c6';
  g.lineWidth = 1.5;
  g.beginPath();
  v.forEach((x, i) => {
    const px = (i / (v.length - 1)) * (w - 2) + 1;
    const py = h - 2 - (x / max) * (h - 4);
    if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
  });
  g.stroke();
}

function settleForm(action, queue, id) {
  const f = document.createElement('form');
  f.className = 'settle';
  f.method = 'post';
  f.dataset.action = action;
  f.dataset.queue = queue;
  if (id !== undefined) f.dataset.id = id;
  const b = document.createElement('button');
  b.type = 'submit';
  b.textContent = action[0].toUpperCase() + action.slice(1);
  f.appendChild(b);
  return f;
}

function renderQueues() {
  const body = $('#queues tbody');
  body.replaceChildren();
  $('#no-queues').hidden = state.queues.length > 0;
  for (const q of state.queues) {
    const tr = document.createElement('tr');
    tr.className = 'queue' + (q.id === state.selected ? ' selected' : '');
    tr.dataset.id = q.id;
    const name = cell(tr, q.name);
    const url = document.createElement('div');
    url.className = 'url';
    url.textContent = q.url;
    name.appendChild(url);
    cell(tr, q.backend);
    if (q.error) {
      const td = cell(tr, q.error, 'paused');
      td.colSpan = 7;
    } else {
      cell(tr, fmt(q.depth), 'n');
      cell(tr, fmt(q.in_flight), 'n');
      cell(tr, fmt(q.delayed), 'n');
      cell(tr, fmt(q.dead), 'n');
      cell(tr, fmt(q.depth_rate, 1), 'n');
      const c = document.createElement('canvas');
      c.className = 'chart';
      cell(tr, '').appendChild(c);
      drawChart(c, q.history || []);
      const td = cell(tr, q.paused === true ? 'paused '
                          : q.paused === false ? 'running ' : '');
      if (q.paused === true) td.classList.add('paused');
      if (q.paused !== null && q.paused !== undefined)
        td.appendChild(settleForm(q.paused ? 'resume' : 'pause', q.id));
    }
    tr.addEventListener('click', (e) => {
      if (e.target.closest('form')) return;
      select(q.id);
    });
    body.appendChild(tr);
  }
}

function renderWorkers(ws) {
  $('#workers-section').hidden = ws.length === 0;
  const body = $('#workers tbody');
  body.replaceChildren();
  const now = Date.now();
  const prev = state.workersPrev;
  ws.forEach((w, i) => {
    const tr = document.createElement('tr');
    cell(tr, w.name);
    cell(tr, w.queue);
    for (const k of ['received', 'succeeded', 'failed', 'dead_lettered',
                     'in_flight'])
      cell(tr, fmt(w[k]), 'n');
    cell(tr, seconds(w.latency_p50_s), 'n');
    cell(tr, seconds(w.latency_p99_s), 'n');
    let rate = null;
    if (prev && prev.ws[i] && now > prev.t)
      rate = (w.succeeded - prev.ws[i].succeeded) * 1000 / (now - prev.t);
    cell(tr, fmt(rate, 1), 'n');
    body.appendChild(tr);
  });
  state.workersPrev = { t: now, ws };
}

function preview(ev) {
  let text;
  if (ev.data !== undefined)
    text = typeof ev.data === 'string' ? ev.data : JSON.stringify(ev.data);
  else if (ev.data_base64 !== undefined)
    text = '(binary, base64) ' + ev.data_base64;
  else
    text = '(no payload)';
  return text.length > 300 ? text.slice(0, 300) + '…' : text;
}

async function loadDead() {
  const q = state.queues.find((x) => x.id === state.selected);
  $('#dead-section').hidden = !q;
  if (!q) return;
  $('#dead-queue').textContent = q.name;
  let page;
  try {
    page = await getJSON(`/api/queues/${q.id}/dead?offset=${state.offset}` +
                         `&limit=${PAGE}`);
  } catch (e) {
    status('dead letters: ' + e.message, true);
    return;
  }
  if (page.total > 0 && state.offset >= page.total) {
    state.offset = Math.max(0, page.total - PAGE);
    return loadDead();
  }
  state.deadSeen = q.dead;
  $('#dead-total').textContent = `(${page.total})`;
  const list = $('#letters');
  list.replaceChildren();
  const tpl = $('#letter-template');
  for (const l of page.letters) {
    const ev = l.event;
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.id = ev.id;
    $('.id', li).textContent = ev.id;
    $('.type', li).textContent = ev.type || '';
    $('time', li).textContent = ev.time || '';
    $('.attempts', li).textContent =
      l.attempts ? `${l.attempts} attempt${l.attempts === '1' ? '' : 's'}` : '';
    $('.reason', li).textContent = l.reason || '';
    $('.payload', li).textContent =
      l.truncated ? '(large: inspect to see it)' : preview(ev);
    li.querySelectorAll('form.settle').forEach((f) => {
      f.dataset.queue = q.id;
      f.dataset.id = ev.id;
    });
    $('.inspect', li).addEventListener('click', () => inspect(q.id, ev.id, li));
    list.appendChild(li);
  }
  $('#no-letters').hidden = page.letters.length > 0;
  $('#page').textContent = page.total
    ? `${state.offset + 1}–${state.offset + page.letters.length} of ${page.total}`
    : '';
  $('#prev').disabled = state.offset === 0;
  $('#next').disabled = state.offset + PAGE >= page.total;
  document.querySelectorAll('#dead-section > .actions form.settle')
    .forEach((f) => { f.dataset.queue = q.id; });
  document.body.dataset.letters = String(page.letters.length);
}

async function inspect(queue, id, li) {
  const pre = $('.full', li);
  if (!pre.hidden) { pre.hidden = true; return; }
  try {
    const l = await getJSON(`/api/queues/${queue}/letter?id=` +
                            encodeURIComponent(id));
    pre.textContent = JSON.stringify(l.event, null, 2);
    pre.hidden = false;
  } catch (e) {
    status('inspect: ' + e.message, true);
  }
}

async function onSubmit(e) {
  const f = e.target.closest('form.settle');
  if (!f) return;
  e.preventDefault();
  const token = $('#token').value;
  if (!token) {
    status('enter the token first', true);
    $('#token').focus();
    return;
  }
  const a = f.dataset.action;
  const q = f.dataset.queue;
  let path;
  if (a === 'pause' || a === 'resume') {
    path = `/api/queues/${q}/${a}`;
  } else {
    const all = f.dataset.all === '1';
    if (all && a === 'purge' && !window.confirm('Purge every dead letter?'))
      return;
    path = `/api/queues/${q}/dead/${a}?` +
           (all ? 'all=1' : 'id=' + encodeURIComponent(f.dataset.id));
  }
  try {
    const r = await fetch(path, {
      method: 'POST', headers: { Authorization: 'Bearer ' + token },
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || r.statusText);
    sessionStorage.setItem('evq-token', token);
    const n = body.replayed ?? body.purged;
    status(n !== undefined ? `${a === 'replay' ? 'replayed' : 'purged'} ${n}`
                           : (body.paused ? 'paused' : 'resumed'));
    document.body.dataset.done = (Number(document.body.dataset.done || 0) + 1)
      .toString();
  } catch (err) {
    status(`${a}: ${err.message}`, true);
    document.body.dataset.failed = err.message;
  }
  await refresh(true);
  // The figures read just after a change may not show it yet (a backend
  // that commits acks in groups): list the letters again at the next poll.
  state.deadSeen = null;
}

function select(id) {
  state.selected = id;
  state.offset = 0;
  history.replaceState(null, '', '#q=' + id);
  renderQueues();
  loadDead();
}

async function refresh(forceDead) {
  let qs, ws;
  try {
    [qs, ws] = await Promise.all([getJSON('/api/queues'),
                                  getJSON('/api/workers')]);
  } catch (e) {
    status('cannot reach the server: ' + e.message, true);
    return;
  }
  state.queues = qs.queues;
  if (state.selected === null && state.queues.length) {
    const m = /^#q=(\d+)$/.exec(location.hash);
    const dead = state.queues.find((q) => q.dead > 0);
    state.selected = m ? Number(m[1]) : (dead || state.queues[0]).id;
  }
  renderQueues();
  renderWorkers(ws.workers);
  const sel = state.queues.find((q) => q.id === state.selected);
  if (forceDead || (sel && sel.dead !== state.deadSeen)) await loadDead();
  document.body.dataset.ready = '1';
}

async function start() {
  $('#token').value = sessionStorage.getItem('evq-token') || '';
  $('#token-form').addEventListener('submit', (e) => e.preventDefault());
  document.addEventListener('submit', onSubmit);
  $('#prev').addEventListener('click', () => {
    state.offset = Math.max(0, state.offset - PAGE); loadDead();
  });
  $('#next').addEventListener('click', () => {
    state.offset += PAGE; loadDead();
  });
  await refresh(true);
  setInterval(() => refresh(false), POLL_MS);
}

start();
