// Weir console: a page over the admin API of `weir serve`.
//
// No library and no build step: the DOM is built with createElement and
// textContent only (never innerHTML), so nothing a query or a plugin
// reports can become markup. Live updates come from GET /events
// (server-sent events) read with fetch, which can send the token as a
// header (EventSource cannot).
'use strict';

const TOKEN_KEY = 'weir-token';
const MAX_POINTS = 100;
const PHASES = [
  ['planBatch', 'plan'], ['getBatch', 'read'], ['transform', 'transform'],
  ['operator', 'operator'], ['addBatch', 'sink'], ['walCommit', 'commit'],
];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  queries: new Map(), // id -> { info, progress: [...] }
  stream: null,
  plans: new Map(),
};

// ------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function announce(text) {
  document.getElementById('announce').textContent = text;
}

function main() { return document.getElementById('main'); }

// replaceChildren would print a skipped (null) part as "null".
function show(...parts) {
  main().replaceChildren(...parts.flat(Infinity).filter((p) => p !== null && p !== undefined && p !== false));
}

// ------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (response.status === 401) { signOut('The token was refused; sign in again.'); }
  if (!response.ok) throw new ApiError(response.status, (body && body.error) || response.statusText);
  return body;
}

function queryPath(id) {
  const [tenant, name] = splitId(id);
  return `/queries/${encodeURIComponent(tenant)}/${encodeURIComponent(name)}`;
}

function splitId(id) {
  const at = id.indexOf('/');
  return [id.slice(0, at), id.slice(at + 1)];
}

// ------------------------------------------------------------ live events

function parseEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    if (field === 'data') data.push(value);
  }
  return { event, data: data.join('\n') };
}

async function follow() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let wait = 1000;
  while (!controller.signal.aborted && state.token) {
    try {
      const response = await fetch('/events', {
        headers: { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' },
        signal: controller.signal,
      });
      if (response.status === 401) { signOut('The token was refused; sign in again.'); return; }
      if (!response.ok) throw new Error(response.statusText);
      wait = 1000;
      document.body.dataset.live = 'true';
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          onEvent(parseEvent(block));
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    document.body.dataset.live = 'false';
    // The stream ended (host restarting, or we fell behind): fetch the
    // state again, then listen again.
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 15000);
    await refresh().catch(() => {});
  }
}

function onEvent({ event, data }) {
  if (event === 'resync') { refresh().then(render).catch(() => {}); return; }
  let value;
  try { value = JSON.parse(data); } catch (_) { return; }
  if (event === 'status') {
    const known = entry(value.id);
    known.info = value;
    rerender(value.id);
  } else if (event === 'progress') {
    const known = entry(value.id);
    addProgress(known, value);
    if (known.info) {
      known.info.batches = value.hostBatches;
      known.info.quarantined_rows = value.hostQuarantinedRows;
    }
    rerender(value.id);
  }
}

function entry(id) {
  if (!state.queries.has(id)) state.queries.set(id, { info: null, progress: [] });
  return state.queries.get(id);
}

function addProgress(known, progress) {
  const list = known.progress;
  const at = list.findIndex((p) => p.hostBatches === progress.hostBatches);
  if (at >= 0) list[at] = progress; else list.push(progress);
  list.sort((a, b) => a.hostBatches - b.hostBatches);
  while (list.length > MAX_POINTS) list.shift();
}

async function refresh() {
  const infos = await api('/queries');
  const seen = new Set();
  await Promise.all(infos.map(async (info) => {
    seen.add(info.id);
    const known = entry(info.id);
    known.info = info;
    try {
      const detail = await api(queryPath(info.id));
      known.info = detail.query;
      known.progress = [];
      for (const p of detail.progress) addProgress(known, p);
    } catch (_) { /* gone meanwhile */ }
  }));
  for (const id of [...state.queries.keys()]) if (!seen.has(id)) state.queries.delete(id);
}

// ------------------------------------------------------------ routing

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = hash.match(/^\/query\/([^/]+)\/([^/]+)$/);
  if (m) return { page: 'query', id: `${decodeURIComponent(m[1])}/${decodeURIComponent(m[2])}` };
  return { page: 'queries' };
}

let renderedRoute = null;

function render() {
  const here = route();
  const changed = JSON.stringify(here) !== JSON.stringify(renderedRoute);
  renderedRoute = here;
  if (!state.token) { renderLogin(); return; }
  document.getElementById('sign-out').hidden = false;
  if (here.page === 'query') renderQuery(here.id, changed); else renderQueries();
  if (changed) main().focus();
}

function rerender(id) {
  const here = route();
  if (here.page === 'queries') renderQueries();
  else if (here.id === id) renderQuery(id, false);
}

// ------------------------------------------------------------ sign in

function renderLogin(message) {
  document.title = 'Sign in · Weir console';
  document.getElementById('sign-out').hidden = true;
  const form = h('form', { id: 'login', onsubmit: (e) => {
    e.preventDefault();
    const token = document.getElementById('token').value.trim();
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  } },
  h('label', { for: 'token' }, 'Token'),
  h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true,
    'aria-describedby': 'token-help' }),
  h('p', { id: 'token-help' }, 'A tenant token (weir token issue TENANT) or the admin token ',
    '(in the state directory, access/admin.token). It stays in this tab only.'),
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  show(h('h1', {}, 'Sign in'), message ? h('p', { class: 'message', role: 'alert' }, message) : null, form);
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  state.queries.clear();
  renderLogin(message);
}

// ------------------------------------------------------------ formatting

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits });
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${fmt(n, i ? 1 : 0)} ${units[i]}`;
}

function ms(text) {
  // "12.5ms" -> 12.5; numbers pass.
  if (typeof text === 'number') return text;
  return parseFloat(String(text || '0')) || 0;
}

function watermarkLagSeconds(p) {
  if (!p || !p.eventTime || !p.eventTime.watermark || !p.timestamp) return null;
  return (Date.parse(p.timestamp) - Date.parse(p.eventTime.watermark)) / 1000;
}

function stateOf(info) {
  return info && info.status ? info.status.state : 'unknown';
}

function stateBadge(info) {
  const st = stateOf(info);
  return h('span', { class: `state state-${st}`, 'data-state': st }, st);
}

function ago(iso) {
  if (!iso) return '–';
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${fmt(seconds)} s ago`;
  if (seconds < 5400) return `${fmt(seconds / 60)} min ago`;
  return new Date(iso).toLocaleString();
}

// ------------------------------------------------------------ queries page

function renderQueries() {
  document.title = 'Queries · Weir console';
  const rows = [...state.queries.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, q]) => {
    const last = q.progress[q.progress.length - 1];
    const [tenant, name] = splitId(id);
    return h('tr', { 'data-query': id },
      h('th', { scope: 'row' }, h('a', { href: `#/query/${encodeURIComponent(tenant)}/${encodeURIComponent(name)}` }, id)),
      h('td', {}, stateBadge(q.info)),
      h('td', { class: 'num' }, fmt(last && last.inputRowsPerSecond, 1)),
      h('td', { class: 'num' }, fmt(last && last.processedRowsPerSecond, 1)),
      h('td', { class: 'num' }, fmt(last && last.sink && last.sink.numOutputRows)),
      h('td', { class: 'num', 'data-batches': q.info ? q.info.batches : 0 }, fmt(q.info && q.info.batches)),
      h('td', {}, last ? ago(last.timestamp) : 'no batch yet'),
      h('td', { class: 'num' }, (() => { const lag = watermarkLagSeconds(last); return lag === null ? '–' : `${fmt(lag, 1)} s`; })()),
      h('td', {}, sparkline(q.progress, id)));
  });
  const table = h('table', { id: 'queries' },
    h('caption', {}, 'Every query this token may see, updated as batches commit'),
    h('thead', {}, h('tr', {},
      ...['Query', 'State', 'Input rows/s', 'Processed rows/s', 'Rows out (last batch)', 'Batches', 'Last batch',
        'Watermark lag', 'Input rows/s, recent batches'].map((t, i) =>
        h('th', { scope: 'col', class: i >= 2 && i <= 5 || i === 7 ? 'num' : null }, t)))),
    h('tbody', {}, rows));
  show(h('h1', {}, 'Queries'),
    rows.length ? table : h('p', {}, 'No queries yet. Submit one with weir submit PIPELINE.toml.'));
}

function sparkline(progress, id) {
  const values = progress.map((p) => p.inputRowsPerSecond || 0);
  const width = 120, height = 28;
  const max = Math.max(1, ...values);
  const points = values.map((v, i) =>
    `${(values.length < 2 ? width / 2 : i * width / (values.length - 1)).toFixed(1)},${(height - 2 - v / max * (height - 4)).toFixed(1)}`);
  return s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `input rows per second of ${id}'s last ${values.length} batches`, class: 'sparkline',
    'data-points': values.length },
  s('polyline', { class: 'series-0', points: points.join(' ') }));
}

// ------------------------------------------------------------ charts

const CHART = { width: 420, height: 170, left: 52, right: 10, top: 10, bottom: 24 };

function scaleY(max, v) {
  const inner = CHART.height - CHART.top - CHART.bottom;
  return CHART.top + inner - (max > 0 ? v / max * inner : 0);
}

function scaleX(n, i) {
  const inner = CHART.width - CHART.left - CHART.right;
  return CHART.left + (n < 2 ? inner / 2 : i * inner / (n - 1));
}

function axes(max, label, format) {
  const bottom = CHART.height - CHART.bottom;
  return [
    s('line', { class: 'axis', x1: CHART.left, y1: bottom, x2: CHART.width - CHART.right, y2: bottom }),
    s('line', { class: 'axis', x1: CHART.left, y1: CHART.top, x2: CHART.left, y2: bottom }),
    s('text', { x: CHART.left - 4, y: CHART.top + 8, 'text-anchor': 'end' }, format(max)),
    s('text', { x: CHART.left - 4, y: bottom, 'text-anchor': 'end' }, '0'),
    s('text', { x: CHART.width - CHART.right, y: CHART.height - 6, 'text-anchor': 'end' }, label),
  ];
}

// A line chart of `series` ({ name, values: [[batchId, value|null], ...] }).
function lineChart(key, title, series, format = (v) => fmt(v, 1), unitLabel = 'batch', empty = 'no data') {
  const n = Math.max(0, ...series.map((x) => x.values.length));
  if (series.every((x) => x.values.every(([, v]) => v === null || v === undefined))) {
    return figure(key, title, `${title}: ${empty}`, [...axes(0, unitLabel, format),
      s('text', { x: CHART.width / 2, y: CHART.height / 2, 'text-anchor': 'middle', class: 'empty' }, empty)], []);
  }
  const max = Math.max(0, ...series.flatMap((x) => x.values.map(([, v]) => v || 0)));
  const children = [...axes(max, unitLabel, format)];
  series.forEach((x, si) => {
    const pts = x.values.map(([batch, v], i) => [batch, v, scaleX(n, i), scaleY(max, v || 0)]).filter(([, v]) => v !== null);
    children.push(s('polyline', { class: `series-${si}`, points: pts.map(([, , cx, cy]) => `${cx.toFixed(1)},${cy.toFixed(1)}`).join(' ') }));
    for (const [batch, v, cx, cy] of pts) {
      children.push(s('circle', { class: `point series-${si}`, cx: cx.toFixed(1), cy: cy.toFixed(1), r: 2.5,
        'data-batch': batch, 'data-series': x.name, 'data-value': v },
      s('title', {}, `batch ${batch}: ${x.name} ${format(v)}`)));
    }
  });
  const last = series.map((x) => `${x.name} ${x.values.length ? format(x.values[x.values.length - 1][1]) : '–'}`).join(', ');
  return figure(key, title, `${title}; latest: ${last}`, children,
    series.length > 1 ? series.map((x, i) => [x.name, `series-${i}`]) : []);
}

function figure(key, title, description, children, legend) {
  const svg = s('svg', { viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: 'img', 'aria-label': description,
    'data-chart': key, width: '100%' }, children);
  return h('figure', { 'data-chart': key }, h('figcaption', {}, title), svg,
    legend.length ? h('p', { class: 'legend' }, legend.map(([name, cls]) =>
      [s('svg', { class: 'swatch', width: 12, height: 12, 'aria-hidden': 'true' },
        s('rect', { class: cls, width: 12, height: 12 })), name])) : null);
}

function phaseChart(progress) {
  const n = progress.length;
  const totals = progress.map((p) => PHASES.reduce((t, [k]) => t + ms(p.durationMs && p.durationMs[k]), 0));
  const max = Math.max(0, ...totals);
  const inner = CHART.width - CHART.left - CHART.right;
  const bar = Math.max(1, inner / Math.max(n, 1) - 1);
  const children = [...axes(max, 'batch', (v) => `${fmt(v, 1)} ms`)];
  progress.forEach((p, i) => {
    let y = CHART.height - CHART.bottom;
    const x = CHART.left + i * inner / Math.max(n, 1);
    for (const [key, name] of PHASES) {
      const v = ms(p.durationMs && p.durationMs[key]);
      const height = max > 0 ? v / max * (CHART.height - CHART.top - CHART.bottom) : 0;
      y -= height;
      children.push(s('rect', { class: `phase-${key}`, x: x.toFixed(1), y: y.toFixed(1), width: bar.toFixed(1),
        height: height.toFixed(1), 'data-batch': p.batchId, 'data-phase': name, 'data-value': v },
      s('title', {}, `batch ${p.batchId}: ${name} ${fmt(v, 1)} ms`)));
    }
  });
  const last = progress[n - 1];
  const description = last ? `Batch duration by phase; latest batch ${last.batchId}: ` +
    PHASES.map(([k, name]) => `${name} ${fmt(ms(last.durationMs[k]), 1)} ms`).join(', ') : 'Batch duration by phase; no batch yet';
  return figure('phases', 'Batch duration by phase (ms)', description, children,
    PHASES.map(([k, name]) => [name, `phase-${k}`]));
}

function charts(progress) {
  const points = (f) => progress.map((p) => [p.batchId, f(p)]);
  const stateOp = (p, field) => (p.stateOperators && p.stateOperators[0] ? p.stateOperators[0][field] : null);
  return h('div', { class: 'charts' },
    lineChart('rates', 'Input rate and process rate (rows/s)', [
      { name: 'input', values: points((p) => p.inputRowsPerSecond || 0) },
      { name: 'processed', values: points((p) => p.processedRowsPerSecond || 0) }]),
    phaseChart(progress),
    lineChart('watermark', 'Watermark gap to the batch\'s wall clock (s)',
      [{ name: 'gap', values: points(watermarkLagSeconds) }], (v) => fmt(v, 1), 'batch', 'no watermark in this query'),
    lineChart('state-rows', 'State rows', [{ name: 'rows', values: points((p) => stateOp(p, 'numRowsTotal')) }], (v) => fmt(v),
      'batch', 'no state: a stateless query'),
    lineChart('state-bytes', 'State memory', [{ name: 'bytes', values: points((p) => stateOp(p, 'memoryUsedBytes')) }], bytes,
      'batch', 'no state: a stateless query'),
    lineChart('late', 'Late rows dropped by the watermark', [{ name: 'dropped', values: points((p) => p.numRowsDroppedByWatermark || 0) }], (v) => fmt(v)));
}

// ------------------------------------------------------------ query page

function renderQuery(id, fresh) {
  const known = state.queries.get(id);
  const [tenant, name] = splitId(id);
  document.title = `${id} · Weir console`;
  if (!known || !known.info) {
    show(h('h1', {}, id), h('p', { role: 'alert', class: 'message' },
      'No such query (or not one this token may see).'), h('p', {}, h('a', { href: '#/' }, 'All queries')));
    return;
  }
  if (fresh || !state.plans.has(id)) loadPlan(id);
  const info = known.info;
  const progress = known.progress;
  const last = progress[progress.length - 1];
  const running = stateOf(info) === 'running';
  const failure = info.status && info.status.state === 'failed'
    ? h('section', { class: 'error', role: 'alert', 'aria-labelledby': 'failure-title' },
      h('h2', { id: 'failure-title' }, 'The query failed'), h('pre', { id: 'failure' }, info.status.error))
    : null;
  const keep = preserveForm();
  show(
    h('h1', {}, `${name} `, h('span', { class: 'visually-hidden' }, `(tenant ${tenant}) `), stateBadge(info)),
    h('p', {}, `Tenant ${tenant} · ${fmt(info.batches)} batches since the host started it · `,
      `${fmt(info.quarantined_rows)} rows quarantined`, last ? ` · last batch ${ago(last.timestamp)}` : ''),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'stop', disabled: !running, onclick: () => act(id, 'stop') }, 'Stop'),
      h('button', { type: 'button', id: 'start', disabled: running, onclick: () => act(id, 'start') }, 'Start')),
    failure,
    h('h2', {}, 'Progress'),
    progress.length ? charts(progress) : h('p', {}, 'No batch has committed since the host started this query.'),
    h('h2', {}, 'Plan'),
    planView(id, last),
    h('h2', {}, 'Plugins'),
    pluginsView(info, progress),
    swapForm(id, info),
    h('h2', {}, 'Recent batches'),
    batchesTable(progress));
  keep();
}

// Re-rendering on every batch must not wipe what someone is typing.
function preserveForm() {
  const stage = document.getElementById('swap-stage');
  const config = document.getElementById('swap-config');
  const file = document.getElementById('swap-file');
  const active = document.activeElement && document.activeElement.id;
  const files = file && file.files;
  const values = { stage: stage && stage.value, config: config && config.value };
  return () => {
    const newStage = document.getElementById('swap-stage');
    if (newStage && values.stage) newStage.value = values.stage;
    const newConfig = document.getElementById('swap-config');
    if (newConfig && values.config) newConfig.value = values.config;
    const newFile = document.getElementById('swap-file');
    if (newFile && files && files.length) newFile.files = files;
    if (active) { const el = document.getElementById(active); if (el) el.focus(); }
  };
}

async function loadPlan(id) {
  state.plans.set(id, null);
  try {
    state.plans.set(id, await api(`${queryPath(id)}/plan`));
  } catch (e) {
    state.plans.set(id, { error: e.message });
  }
  rerender(id);
}

function planView(id, last) {
  const plan = state.plans.get(id);
  if (!plan) return h('p', {}, 'Loading the plan…');
  if (plan.error) return h('p', { class: 'message' }, `No plan: ${plan.error}`);
  const plugins = new Map(((last && last.plugins) || []).map((p) => [p.name, p]));
  const items = [];
  plan.steps.forEach((step, i) => {
    if (i > 0 && step.kind !== 'read') items.push(h('li', { class: 'edge', 'aria-hidden': 'true' }, `→ ${step.edge} →`));
    const stage = step.kind === 'transform' || step.kind === 'stateful'
      ? plugins.get(step.detail.split(' ')[0]) : null;
    items.push(h('li', { class: 'step', 'data-kind': step.kind },
      h('div', { class: 'kind' }, step.kind),
      h('div', { class: 'detail' }, step.detail),
      h('div', { class: 'facts' }, `${step.tasks} ${step.tasks === 1 ? 'task' : 'tasks'}`,
        step.kind === 'read' ? '' : `; rows arrive ${step.edge}`,
        step.state ? `; state in ${step.state}` : ''),
      stage ? h('div', { class: 'facts' }, `last batch: ${fmt(stage.durationMs)} ms in ${fmt(stage.calls)} ${stage.calls === 1 ? 'call' : 'calls'}`,
        Object.keys(stage.counters || {}).length
          ? `; ${Object.entries(stage.counters).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}` : '') : null));
  });
  const keyed = plan.steps.some((step) => step.state);
  return h('div', {}, keyed ? h('p', {}, `Keyed state in ${fmt(plan.keyGroups)} key groups.`) : null,
    h('ol', { class: 'plan', id: 'plan', 'aria-label': `plan of ${plan.name}` }, items));
}

function pluginsView(info, progress) {
  const last = progress[progress.length - 1];
  const plugins = (last && last.plugins) || [];
  const history = [];
  let previous = new Map();
  for (const p of progress) {
    for (const event of p.pluginEvents || []) history.push([p.batchId, event]);
    for (const plugin of p.plugins || []) {
      const before = previous.get(plugin.name);
      if (before && before !== plugin.digest && !(p.pluginEvents || []).length) {
        history.push([p.batchId, `${plugin.name}: ${before.slice(0, 19)} → ${plugin.digest.slice(0, 19)}`]);
      }
      previous.set(plugin.name, plugin.digest);
    }
  }
  const table = plugins.length ? h('table', { id: 'plugins' },
    h('caption', {}, 'Plugin versions in the last batch'),
    h('thead', {}, h('tr', {}, ['Stage', 'Digest', 'Calls', 'Time (ms)', 'Memory', 'Counters (since start)']
      .map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, plugins.map((p) => h('tr', { 'data-stage': p.name },
      h('th', { scope: 'row' }, p.name),
      h('td', { class: 'digest', 'data-digest': p.digest }, p.digest),
      h('td', { class: 'num' }, fmt(p.calls)),
      h('td', { class: 'num' }, fmt(p.durationMs)),
      h('td', { class: 'num' }, bytes(p.memoryBytes)),
      h('td', {}, Object.entries(p.counters || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(', ') || '–')))))
    : h('p', {}, info.stages.length ? 'No batch has run the plugins yet.' : 'This query has no transform plugins.');
  const log = history.length
    ? h('div', {}, h('h3', {}, 'Swaps and rollbacks'), h('ul', { id: 'plugin-history' },
      history.map(([batch, text]) => h('li', {}, `batch ${batch}: ${text}`))))
    : null;
  return h('div', {}, table, log);
}

function swapForm(id, info) {
  if (!info.stages.length) return null;
  const result = h('p', { id: 'swap-result', role: 'status' });
  return h('form', { class: 'swap', id: 'swap', onsubmit: (e) => { e.preventDefault(); swap(id, result); } },
    h('h3', {}, 'Swap a plugin'),
    h('p', {}, 'The new version takes over at the next batch; if it fails that batch, the stage rolls back.'),
    h('label', { for: 'swap-stage' }, 'Stage'),
    h('select', { id: 'swap-stage' }, info.stages.map((name) => h('option', { value: name }, name))),
    h('label', { for: 'swap-file' }, 'Component (.wasm)'),
    h('input', { id: 'swap-file', type: 'file', accept: '.wasm,application/wasm', required: true }),
    h('label', { for: 'swap-config' }, 'Config (JSON; empty keeps the stage\'s)'),
    h('textarea', { id: 'swap-config', rows: 2 }),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', disabled: stateOf(info) !== 'running' }, 'Upload and swap')),
    result);
}

async function swap(id, result) {
  const file = document.getElementById('swap-file').files[0];
  const stage = document.getElementById('swap-stage').value;
  const configText = document.getElementById('swap-config').value.trim();
  if (!file) { result.textContent = 'Choose a component file.'; return; }
  try {
    let config;
    if (configText) {
      try { config = JSON.parse(configText); } catch (e) { throw new Error(`the config is not JSON: ${e.message}`); }
    }
    result.textContent = `Uploading ${file.name}…`;
    const uploaded = await api('/plugins', { method: 'PUT', headers: { 'Content-Type': 'application/wasm' },
      body: await file.arrayBuffer() });
    const body = { stage, plugin: uploaded.plugin };
    if (config !== undefined) body.config = config;
    const accepted = await api(`${queryPath(id)}/swap`, { method: 'POST',
      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    result.textContent = `Accepted: ${accepted.stage} runs ${accepted.digest} from the next batch.`;
    result.dataset.digest = accepted.digest;
    announce(result.textContent);
  } catch (e) {
    result.textContent = `Swap refused: ${e.message}`;
    announce(result.textContent);
  }
}

async function act(id, what) {
  announce(`${what === 'stop' ? 'Stopping' : 'Starting'} ${id}…`);
  try {
    const info = await api(`${queryPath(id)}/${what}`, { method: 'POST' });
    entry(id).info = info;
    announce(`${id} is ${stateOf(info)}.`);
  } catch (e) {
    announce(`${what} failed: ${e.message}`);
  }
  rerender(id);
}

function batchesTable(progress) {
  const recent = progress.slice(-20).reverse();
  if (!recent.length) return h('p', {}, 'No batch yet.');
  return h('table', { id: 'batches' },
    h('caption', {}, `The last ${recent.length} batches, newest first`),
    h('thead', {}, h('tr', {}, ['Batch', 'Started', 'Input rows', 'Output rows', 'Late rows dropped', 'Duration (ms)', 'Watermark']
      .map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, recent.map((p) => h('tr', { 'data-batch': p.batchId },
      h('th', { scope: 'row' }, `${p.batchId}${p.replay ? ' (replay)' : ''}`),
      h('td', {}, p.timestamp || '–'),
      h('td', { class: 'num' }, fmt(p.numInputRows)),
      h('td', { class: 'num' }, fmt(p.sink && p.sink.numOutputRows)),
      h('td', { class: 'num' }, fmt(p.numRowsDroppedByWatermark)),
      h('td', { class: 'num' }, fmt(p.durationMs && p.durationMs.triggerExecution)),
      h('td', {}, (p.eventTime && p.eventTime.watermark) || '–')))));
}

// ------------------------------------------------------------ start

async function start() {
  try {
    await refresh();
  } catch (e) {
    if (state.token) renderLogin(`Cannot reach the host: ${e.message}`);
    return;
  }
  render();
  follow();
}

window.addEventListener('hashchange', render);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('sign-out').addEventListener('click', () => signOut('Signed out.'));
  if (state.token) start(); else render();
});
