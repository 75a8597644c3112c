// The console's pages: fleet, agent, functions, function (form, invoke), jobs, job (live),
// pipelines, approvals, audit. Forms come from the function's JSON Schema through JSON Editor
// (vendor/jsoneditor.js); results render as a tree with the raw JSON one click away.
import { rpc, stream, h, when, toast, isAdmin, onLeave, session, ApiError } from './app.js';

const PAGE = 100;
const STATES = ['NODE_STATE_NORMAL', 'NODE_STATE_MAINTENANCE', 'NODE_STATE_DISABLED'];
const stateName = (s) => String(s || 'NODE_STATE_NORMAL').replace('NODE_STATE_', '').toLowerCase();
const link = (href, text, attrs) => h('a', Object.assign({ href }, attrs || {}), text);
const fnHref = (g, e, f) => `#/function/${encodeURIComponent(g)}/${encodeURIComponent(e)}/${encodeURIComponent(f)}`;

/** A value as a collapsible tree; arrays of objects as a table. */
function tree(value) {
  if (Array.isArray(value) && value.length && value.every((v) => v && typeof v === 'object' && !Array.isArray(v))) {
    const keys = [...new Set(value.flatMap((v) => Object.keys(v)))];
    return h('table', {}, h('thead', {}, h('tr', {}, keys.map((k) => h('th', {}, k)))),
      h('tbody', {}, value.map((v) => h('tr', {}, keys.map((k) => h('td', {}, cell(v[k])))))));
  }
  if (value && typeof value === 'object') {
    return h('ul', {}, Object.entries(value).map(([k, v]) => h('li', {}, h('span', { class: 'k' }, k), ': ', cell(v))));
  }
  return String(value);
}
const cell = (v) => (v && typeof v === 'object' ? h('div', { class: 'tree' }, tree(v)) : String(v ?? ''));

/** A result: the tree, and a button that shows the raw JSON instead. */
function resultView(value) {
  const raw = h('pre', { hidden: true, 'data-testid': 'result-raw' }, JSON.stringify(value, null, 2));
  const pretty = h('div', { class: 'tree', 'data-testid': 'result-tree' }, tree(value));
  const toggle = h('button', { type: 'button', class: 'secondary', 'data-testid': 'raw-toggle' }, 'Raw JSON');
  toggle.addEventListener('click', () => {
    raw.hidden = !raw.hidden;
    pretty.hidden = !raw.hidden;
    toggle.textContent = raw.hidden ? 'Raw JSON' : 'Tree';
  });
  return h('div', {}, toggle, pretty, raw);
}

function pager(total, page, go) {
  const pages = Math.max(1, Math.ceil(total / PAGE));
  return h('div', { class: 'pager' },
    h('button', { type: 'button', class: 'secondary', disabled: page <= 0, onclick: () => go(page - 1) }, 'Previous'),
    h('span', {}, `page ${page + 1} of ${pages} (${total} rows)`),
    h('button', { type: 'button', class: 'secondary', disabled: page >= pages - 1, onclick: () => go(page + 1) }, 'Next'));
}

async function allAgents() {
  let token = '';
  const out = [];
  do {
    const r = await rpc('ListAgents', { page_size: 5000, page_token: token });
    out.push(...r.agents);
    token = r.next_page_token;
  } while (token);
  return out;
}

async function allRegistrations(req) {
  let token = '';
  const out = [];
  do {
    const r = await rpc('GetRegistrations', Object.assign({ page_size: 5000, page_token: token }, req));
    out.push(...r.registrations);
    token = r.next_page_token;
  } while (token);
  return out;
}

// ---- fleet -----------------------------------------------------------------------------------

async function fleet(main) {
  const started = performance.now();
  let agents = await allAgents();
  let page = 0;
  const f = {
    text: h('input', { id: 'f-text', placeholder: 'agent id', 'aria-label': 'Agent id' }),
    game: h('input', { id: 'f-game', placeholder: 'game', 'aria-label': 'Game' }),
    env: h('input', { id: 'f-env', placeholder: 'env', 'aria-label': 'Environment' }),
    label: h('input', { id: 'f-label', placeholder: 'key=value', 'aria-label': 'Label' }),
    state: h('select', { id: 'f-state', 'aria-label': 'State' }, h('option', { value: '' }, 'any state'),
      STATES.map((s) => h('option', { value: s }, stateName(s))), h('option', { value: 'offline' }, 'offline')),
  };
  const body = h('tbody', {});
  const pages = h('div', {});
  const count = h('span', { class: 'muted', 'data-testid': 'fleet-count' });
  const matches = (a) => {
    const [lk, lv] = f.label.value.split('=');
    return (!f.text.value || a.agent_id.includes(f.text.value))
      && (!f.game.value || a.game_id === f.game.value)
      && (!f.env.value || a.env === f.env.value)
      && (!lk || (a.labels || {})[lk] === lv || (lv === undefined && lk in (a.labels || {})))
      && (!f.state.value || (f.state.value === 'offline' ? !a.online : (a.node_state || {}).state === f.state.value));
  };
  const render = () => {
    const shown = agents.filter(matches);
    page = Math.min(page, Math.max(0, Math.ceil(shown.length / PAGE) - 1));
    count.textContent = `${shown.length} of ${agents.length} agents`;
    body.replaceChildren(...shown.slice(page * PAGE, (page + 1) * PAGE).map((a) => {
      const st = a.node_state || {};
      const s = a.status || {};
      return h('tr', { 'data-agent': a.agent_id },
        h('td', {}, link(`#/agent/${encodeURIComponent(a.agent_id)}`, a.agent_id)),
        h('td', {}, `${a.game_id}/${a.env}`),
        h('td', { title: st.actor ? `${st.actor}: ${st.reason}` : '' }, stateName(st.state), st.reason ? h('div', { class: 'muted' }, `${st.actor}: ${st.reason}`) : ''),
        h('td', { class: a.online ? 'ok' : 'bad' }, a.online ? 'online' : 'offline'),
        h('td', { class: 'hide-narrow' }, a.owner),
        h('td', { class: 'hide-narrow' }, a.version),
        h('td', { class: 'hide-narrow' }, Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')),
        h('td', {}, s.cpu_percent || s.memory_percent ? `${s.cpu_percent || '—'}% / ${s.memory_percent || '—'}%` : '—'),
        h('td', {}, `${a.in_flight} / ${s.running_jobs || 0}`),
        h('td', {}, when(a.last_heartbeat)));
    }));
    pages.replaceChildren(pager(shown.length, page, (p) => { page = p; render(); }));
  };
  for (const el of Object.values(f)) el.addEventListener('input', () => { page = 0; render(); });
  main.replaceChildren(h('h1', {}, 'Fleet'),
    h('div', { class: 'filters' }, Object.values(f), count),
    h('table', { 'data-testid': 'fleet' }, h('thead', {}, h('tr', {}, ['Agent', 'Game/env', 'State', 'Tunnel', 'Server', 'Version', 'Labels', 'CPU / memory', 'Calls / jobs', 'Last heartbeat']
      .map((t, i) => h('th', { class: i >= 4 && i <= 6 ? 'hide-narrow' : '' }, t)))), body),
    pages);
  render();
  // How long the page took to fetch and show the fleet (bench_fleet.py reads it).
  main.querySelector('[data-testid=fleet]').dataset.renderMs = String(Math.round(performance.now() - started));
  // Live: a registry change reloads the list (at most once a second), no polling.
  let timer = null;
  const es = stream('WatchRegistrations', {}, () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      agents = await allAgents().catch(() => agents);
      render();
    }, 1000);
  });
  onLeave(() => { es.close(); clearTimeout(timer); });
}

// ---- one agent -------------------------------------------------------------------------------

async function agent(main, id) {
  const a = (await allAgents()).find((x) => x.agent_id === id);
  if (!a) throw new Error(`no agent ${id} is registered`);
  const st = a.node_state || {};
  const info = h('div', { class: 'card' },
    h('p', {}, `${a.game_id}/${a.env} · version ${a.version || '—'} · `, h('span', { class: a.online ? 'ok' : 'bad' }, a.online ? 'online' : 'offline'),
      ` · server ${a.owner} · from ${a.addr} · last heartbeat ${when(a.last_heartbeat)}`),
    h('p', { 'data-testid': 'node-state' }, `State: ${stateName(st.state)}`, st.actor ? ` — set by ${st.actor} at ${when(st.changed_at)}: ${st.reason}` : '',
      st.changed_at && !st.applied_at ? ' (pending: not acknowledged yet)' : ''),
    h('p', {}, 'Labels: ', Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'));
  const sections = [h('h1', {}, `Agent ${id}`), info];
  if (isAdmin()) {
    const sel = h('select', { id: 'state-select', 'aria-label': 'New state' }, STATES.map((s) => h('option', { value: s, selected: s === (st.state || 'NODE_STATE_NORMAL') }, stateName(s))));
    const reason = h('input', { id: 'state-reason', placeholder: 'why (required)', 'aria-label': 'Reason', required: true });
    const out = h('span', { 'data-testid': 'state-result' });
    const form = h('form', { class: 'filters', 'aria-label': 'Set node state' }, sel, reason, h('button', { type: 'submit' }, 'Set state'), out);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const r = await rpc('SetNodeState', { agent_id: id, state: sel.value, reason: reason.value });
        out.textContent = `done: ${r.delivery || 'stored'}`;
        setTimeout(() => agent(main, id), 500);
      } catch (ex) { out.textContent = `${ex.code}: ${ex.message}`; }
    });
    sections.push(h('h2', {}, 'Node state'), form);
  }
  sections.push(h('h2', {}, 'Functions'), h('ul', {}, (a.functions || []).map((f) => h('li', {}, link(fnHref(a.game_id, a.env, f), f)))));
  const inv = h('div', { class: 'card' }, 'Loading…');
  const metrics = h('div', { class: 'card' }, 'Loading…');
  const events = h('tbody', {});
  sections.push(h('h2', {}, 'Recent events'), h('table', { 'data-testid': 'events' }, h('thead', {}, h('tr', {}, ['Time', 'Type', 'Entity', 'Status', 'Message'].map((t) => h('th', {}, t)))), events),
    h('h2', {}, 'Metrics (last hour)'), metrics, h('h2', {}, 'Inventory'), inv);
  main.replaceChildren(...sections);
  rpc('GetNodeResources', { agent_id: id }).then((r) => inv.replaceChildren(resultView(r.inventory || r))).catch((ex) => { inv.textContent = ex.message; });
  rpc('QueryNodeMetrics', { agent_id: id }).then((r) => {
    const rows = (r.series || []).map((s) => {
      const v = s.points.map((p) => p.value);
      const avg = v.reduce((x, y) => x + y, 0) / (v.length || 1);
      return { metric: s.name, last: v[v.length - 1]?.toFixed(2), min: Math.min(...v).toFixed(2), avg: avg.toFixed(2), max: Math.max(...v).toFixed(2), points: v.length };
    });
    metrics.replaceChildren(rows.length ? tree(rows) : 'No samples yet.');
  }).catch((ex) => { metrics.textContent = ex.message; });
  const es = stream('StreamNodeEvents', { node_id: id, follow: true, since: Date.now() - 24 * 3600 * 1000 }, (m) => {
    const ev = m.event;
    if (!ev) return;
    events.prepend(h('tr', {}, h('td', {}, when(ev.timestamp)), h('td', {}, ev.type), h('td', {}, ev.entity_id), h('td', {}, ev.status), h('td', {}, ev.message)));
    while (events.children.length > 50) events.lastChild.remove();
  }, (err) => events.replaceChildren(h('tr', {}, h('td', { colspan: 5 }, err.message))));
  onLeave(() => es.close());
}

// ---- functions -------------------------------------------------------------------------------

async function functions(main) {
  const [regs, stats] = await Promise.all([allRegistrations({}), rpc('GetFunctionStats', {}).catch(() => ({ stats: [] }))]);
  const byKey = new Map(stats.stats.map((s) => [`${s.game_id}/${s.env}/${s.function_id}`, s]));
  const text = h('input', { placeholder: 'filter', 'aria-label': 'Filter functions' });
  const body = h('tbody', {});
  const render = () => body.replaceChildren(...regs.filter((r) => r.function_id.includes(text.value)).map((r) => {
    const d = r.function_descriptor || {};
    const s = (byKey.get(`${r.game_id}/${r.env}/${r.function_id}`) || {}).total || {};
    return h('tr', { 'data-function': r.function_id },
      h('td', {}, link(fnHref(r.game_id, r.env, r.function_id), r.function_id)),
      h('td', {}, `${r.game_id}/${r.env}`),
      h('td', {}, (d.semantics || {}).job ? 'job' : 'call'),
      h('td', {}, `${r.agents.filter((a) => a.online).length} / ${r.agents.length}`),
      h('td', {}, String(s.calls || 0)), h('td', { class: s.errors ? 'bad' : '' }, String(s.errors || 0)),
      h('td', {}, s.calls ? `${Number(s.p50_ms).toFixed(1)} / ${Number(s.p99_ms).toFixed(1)} ms` : '—'),
      h('td', { class: 'hide-narrow' }, d.description || ''));
  }));
  text.addEventListener('input', render);
  main.replaceChildren(h('h1', {}, 'Functions'), h('div', { class: 'filters' }, text),
    h('table', { 'data-testid': 'functions' }, h('thead', {}, h('tr', {}, ['Function', 'Game/env', 'Kind', 'Agents online', 'Calls', 'Errors', 'p50 / p99', 'Description'].map((t) => h('th', {}, t)))), body));
  render();
}

/** The schema with sensitive fields as password inputs (JSON Editor's `format: password`). */
function withSecrets(schema, sensitive) {
  const walk = (s) => {
    if (!s || typeof s !== 'object') return;
    for (const [k, p] of Object.entries(s.properties || {})) {
      if (sensitive.includes(k) && p && p.type === 'string') p.format = 'password';
      walk(p);
    }
    if (s.items) walk(s.items);
  };
  const copy = JSON.parse(JSON.stringify(schema));
  walk(copy);
  return copy;
}

function editorFor(el, schema) {
  return new window.JSONEditor(el, {
    schema: Object.keys(schema).length ? schema : { type: 'object' },
    theme: 'html', iconlib: null, disable_collapse: true, disable_properties: false,
    disable_edit_json: false, show_errors: 'interaction', required_by_default: false,
    no_additional_properties: schema.additionalProperties === false, use_default_values: true,
  });
}

async function fn(main, game, env, id) {
  const [reg] = await allRegistrations({ game_id: game, env, function_id: id });
  if (!reg) throw new Error(`${id} is not registered in ${game}/${env}`);
  const d = reg.function_descriptor || {};
  const job = !!(d.semantics || {}).job;
  const schema = withSecrets(d.params_schema || {}, ((d.auth || {}).sensitive_fields) || []);
  const formEl = h('div', { class: 'je-form', 'data-testid': 'payload-form' });
  const errors = h('ul', { class: 'errors', 'data-testid': 'form-errors', role: 'alert' });
  const route = h('select', { id: 'route', 'aria-label': 'Routing' }, ['lb', 'target', 'hash', 'broadcast', 'selector'].map((r) => h('option', { value: r }, r)));
  const target = h('select', { id: 'target', 'aria-label': 'Target agent' }, reg.agents.map((a) => h('option', { value: a.agent_id }, a.agent_id)));
  const hashKey = h('input', { id: 'hash-key', placeholder: 'hash key', 'aria-label': 'Hash key' });
  const selector = h('input', { id: 'selector', placeholder: 'k=v,k2=v2', 'aria-label': 'Selector' });
  const idem = h('input', { id: 'idem-key', placeholder: 'idempotency key (optional)', 'aria-label': 'Idempotency key' });
  const timeout = h('input', { id: 'timeout', type: 'number', min: 0, placeholder: 'timeout s', 'aria-label': 'Timeout seconds' });
  const out = h('div', { 'data-testid': 'invoke-result', 'aria-live': 'polite' });
  const button = h('button', { type: 'button', id: 'invoke' }, job ? 'Start job' : 'Invoke');
  const sync = () => {
    target.hidden = route.value !== 'target';
    hashKey.hidden = route.value !== 'hash';
    selector.hidden = route.value !== 'selector';
  };
  route.addEventListener('change', sync);
  main.replaceChildren(h('h1', {}, id),
    h('p', {}, d.description || ''),
    h('p', { class: 'muted' }, `${game}/${env} · ${job ? 'job' : 'call'} · ${(d.semantics || {}).kind || 'command'} · agents: ${reg.agents.map((a) => a.agent_id).join(', ')}`),
    h('div', { class: 'grid' },
      h('div', {}, h('h2', {}, 'Payload'), formEl, errors,
        h('div', { class: 'filters' }, route, target, hashKey, selector, idem, timeout, button), out),
      h('div', {}, h('h2', {}, 'Schema'), h('pre', { 'data-testid': 'schema' }, JSON.stringify(d.params_schema || {}, null, 2)))));
  sync();
  const editor = editorFor(formEl, schema);
  onLeave(() => editor.destroy());
  button.addEventListener('click', async () => {
    // A field still being edited commits its value on blur ("change"): do that first.
    // The form library applies it on its next turn.
    if (formEl.contains(document.activeElement)) document.activeElement.blur();
    await new Promise((resolve) => { setTimeout(resolve, 50); });
    const problems = editor.validate();
    errors.replaceChildren(...problems.map((p) => h('li', {}, `${p.path.replace(/^root\.?/, '') || 'payload'}: ${p.message}`)));
    if (problems.length) {
      editor.options.show_errors = 'always';
      editor.onChange();
      return;
    }
    const options = { routing_mode: route.value === 'lb' ? '' : route.value, idempotency_key: idem.value, timeout: Number(timeout.value || 0) };
    if (route.value === 'target') options.target_agent = target.value;
    if (route.value === 'hash') options.hash_key = hashKey.value;
    if (route.value === 'selector') options.selector = Object.fromEntries(selector.value.split(',').filter(Boolean).map((p) => p.split('=')));
    const req = { game_id: game, env, function_id: id, payload: editor.getValue() || {}, options };
    out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
    try {
      if (job) {
        const r = await rpc('InvokeJob', req);
        location.hash = `#/job/${encodeURIComponent(r.job_id)}`;
        return;
      }
      const r = await rpc('InvokeFunction', req);
      out.replaceChildren(invokeResult(r));
    } catch (ex) {
      if (ex instanceof ApiError && ex.reason === 'APPROVAL_REQUIRED') {
        out.replaceChildren(awaitApproval(ex.details.approval_id, ex.message));
      } else {
        out.replaceChildren(h('p', { class: 'errors', role: 'alert' }, `${ex.code}${ex.reason ? ` (${ex.reason})` : ''}: ${ex.message}`));
      }
    }
  });
}

function invokeResult(r) {
  if (r.results && r.results.length) {
    return h('div', {}, h('p', { class: r.success ? 'ok' : 'bad' }, r.success ? 'succeeded on every agent' : 'failed on some agents'),
      resultView(r.results.map((x) => ({ agent: x.agent_id, ok: x.success, result: x.result, error: x.error_code ? `${x.error_code}: ${x.error}` : '' }))));
  }
  return h('div', {}, h('p', { class: r.success ? 'ok' : 'bad', 'data-testid': 'invoke-status' },
    r.success ? `succeeded on ${r.agent_id}` : `failed on ${r.agent_id}: ${r.error_code} ${r.error}`), resultView(r.result || {}));
}

/** Waits for an approval's outcome: the requester sees the call run (or be rejected). */
function awaitApproval(approvalId, message) {
  const box = h('div', { class: 'card', 'data-testid': 'approval-wait' }, h('p', { class: 'warn' }, `Waiting for approval ${approvalId}: ${message}`));
  let stopped = false;
  onLeave(() => { stopped = true; });
  const check = async () => {
    if (stopped) return;
    const a = (await rpc('GetApproval', { id: approvalId }).catch(() => null) || {}).approval;
    if (a && a.state !== 'pending') {
      box.replaceChildren(h('p', { class: a.state === 'approved' ? 'ok' : 'bad', 'data-testid': 'approval-outcome' },
        `${a.state}${a.error_code ? ` (${a.error_code}: ${a.error})` : ''}`),
      a.job_id ? link(`#/job/${encodeURIComponent(a.job_id)}`, `job ${a.job_id}`) : resultView(a.result || {}));
      return;
    }
    setTimeout(check, 2000);
  };
  setTimeout(check, 1000);
  return box;
}

// ---- jobs ------------------------------------------------------------------------------------

async function jobs(main) {
  const f = {
    function_id: h('input', { placeholder: 'function', 'aria-label': 'Function' }),
    agent_id: h('input', { placeholder: 'agent', 'aria-label': 'Agent' }),
    status: h('select', { 'aria-label': 'Status' }, ['', 'pending', 'running', 'completed', 'failed', 'cancelled'].map((s) => h('option', { value: s }, s || 'any status'))),
  };
  const body = h('tbody', {});
  const tokens = [''];
  let page = 0;
  const next = h('button', { type: 'button', class: 'secondary' }, 'Next');
  const prev = h('button', { type: 'button', class: 'secondary' }, 'Previous');
  const load = async () => {
    const r = await rpc('ListJobs', { function_id: f.function_id.value, agent_id: f.agent_id.value, status: f.status.value, page_size: PAGE, page_token: tokens[page] });
    tokens[page + 1] = r.next_page_token;
    next.disabled = !r.next_page_token;
    prev.disabled = page === 0;
    body.replaceChildren(...r.jobs.map((j) => h('tr', {},
      h('td', {}, link(`#/job/${encodeURIComponent(j.job_id)}`, j.job_id)), h('td', {}, j.function_id),
      h('td', {}, j.agent_id), h('td', {}, j.status), h('td', {}, j.caller), h('td', {}, when(j.created_at)), h('td', {}, when(j.ended_at)))));
  };
  next.addEventListener('click', () => { page += 1; load(); });
  prev.addEventListener('click', () => { page = Math.max(0, page - 1); load(); });
  for (const el of Object.values(f)) el.addEventListener('change', () => { page = 0; load(); });
  main.replaceChildren(h('h1', {}, 'Jobs'), h('div', { class: 'filters' }, Object.values(f)),
    h('table', { 'data-testid': 'jobs' }, h('thead', {}, h('tr', {}, ['Job', 'Function', 'Agent', 'Status', 'Caller', 'Created', 'Ended'].map((t) => h('th', {}, t)))), body),
    h('div', { class: 'pager' }, prev, next));
  await load();
}

async function job(main, id) {
  const rec = (await rpc('GetJob', { job_id: id })).job;
  const status = h('strong', { 'data-testid': 'job-status' }, rec.status);
  const bar = h('div', { style: 'width: 0%' });
  const pct = h('span', { 'data-testid': 'job-progress' }, '0%');
  const logs = h('pre', { 'data-testid': 'job-log' });
  const steps = h('tbody', {});
  const stepRows = new Map();
  const stepBox = h('div', { hidden: true }, h('h2', {}, 'Steps'),
    h('table', { 'data-testid': 'job-steps' }, h('thead', {}, h('tr', {}, h('th', {}, 'Step'), h('th', {}, 'Status'), h('th', {}, 'Message'))), steps));
  const result = h('div', { 'data-testid': 'job-result' });
  const reason = h('input', { id: 'cancel-reason', placeholder: 'why', 'aria-label': 'Cancel reason' });
  const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel-job' }, 'Cancel job');
  const terminal = (s) => ['completed', 'failed', 'cancelled'].includes(s);
  cancel.disabled = terminal(rec.status);
  cancel.addEventListener('click', async () => {
    try {
      const r = await rpc('CancelJob', { job_id: id, reason: reason.value });
      toast(`cancel: ${r.status} ${r.message}`);
    } catch (ex) { toast(`${ex.code}: ${ex.message}`); }
  });
  main.replaceChildren(h('h1', {}, `Job ${id}`),
    h('p', {}, `${rec.function_id} on ${rec.agent_id} · ${rec.game_id}/${rec.env} · started by ${rec.caller} at ${when(rec.created_at)} · `, status),
    h('div', { class: 'progress', role: 'progressbar', 'aria-label': 'Progress' }, bar), pct,
    h('div', { class: 'filters' }, reason, cancel),
    stepBox,
    h('h2', {}, 'Log'), logs, h('h2', {}, 'Result'), result);
  const show = (ev) => {
    const type = ev.type || 'START';
    const data = ev.data || {};
    if (type === 'PROGRESS' || ev.progress) {
      const p = Math.round(Number(ev.progress || 0) * (Number(ev.progress) <= 1 ? 100 : 1));
      bar.style.width = `${p}%`;
      pct.textContent = `${p}%`;
    }
    if (data.step !== undefined && (data.status || data.step_status)) {
      const key = String(data.step);
      if (!stepRows.has(key)) { const row = h('tr', {}); stepRows.set(key, row); steps.append(row); stepBox.hidden = false; }
      stepRows.get(key).replaceChildren(h('td', {}, key), h('td', {}, data.status || data.step_status), h('td', {}, ev.message || ''));
    }
    if (ev.message) logs.append(`${when(ev.timestamp)} ${type} ${ev.message}\n`);
    if (type === 'DONE') { status.textContent = 'completed'; bar.style.width = '100%'; pct.textContent = '100%'; result.replaceChildren(resultView(data)); }
    if (type === 'ERROR') { status.textContent = 'failed'; result.replaceChildren(resultView(data)); }
    if (type === 'CANCELLED') status.textContent = 'cancelled';
    if (type === 'GAP') logs.append(`(events up to ${data.next_seq - 1} were dropped by retention)\n`);
    if (['DONE', 'ERROR', 'CANCELLED'].includes(type)) { cancel.disabled = true; es.close(); }
  };
  const es = stream('StreamJobEvents', { job_id: id }, show, (err) => logs.append(`stream: ${err.code}: ${err.message}\n`));
  onLeave(() => es.close());
}

// ---- pipelines -------------------------------------------------------------------------------

async function sendText(path, text) {
  const resp = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'text/plain', 'X-CSRF-Token': session.csrf }, body: text, credentials: 'same-origin' });
  const data = await resp.json();
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const NEW_TEMPLATE = `id = "hello"
description = "Says hello in a container"

[[args]]
name = "who"
required = true

[[steps]]
name = "greet"
function = "container.run"
timeout = 60
args = { image = "busybox:latest", cmd = ["echo", "hello \${args.who}"] }
`;

async function pipelines(main, id) {
  const list = (await rpc('ListPipelines', {})).templates;
  const current = list.find((t) => t.id === id);
  const editor = h('textarea', { id: 'pipeline-toml', rows: 18, cols: 90, spellcheck: 'false', 'aria-label': 'Pipeline template (TOML)' });
  const out = h('p', { 'data-testid': 'pipeline-result', role: 'status' });
  editor.value = NEW_TEMPLATE;
  if (current) {
    const r = await fetch(`/api/pipeline-toml/${encodeURIComponent(current.id)}`, { credentials: 'same-origin' }).then((x) => x.json());
    editor.value = r.toml || JSON.stringify(current, null, 2);
  }
  const save = h('button', { type: 'button', id: 'pipeline-save', hidden: !isAdmin() }, 'Validate and save');
  save.addEventListener('click', async () => {
    try {
      const r = await sendText('/api/pipeline-toml', editor.value);
      out.textContent = `saved ${r.id} (revision ${r.revision})`;
      if (r.id !== id) location.hash = `#/pipelines/${encodeURIComponent(r.id)}`;
    } catch (ex) { out.textContent = `${ex.code}: ${ex.message}`; }
  });
  const sections = [h('h1', {}, 'Pipelines'),
    h('table', { 'data-testid': 'pipelines' }, h('thead', {}, h('tr', {}, ['Template', 'Description', 'Arguments', 'Steps'].map((t) => h('th', {}, t)))),
      h('tbody', {}, list.map((t) => h('tr', {}, h('td', {}, link(`#/pipelines/${encodeURIComponent(t.id)}`, t.id)), h('td', {}, t.description),
        h('td', {}, t.args.map((a) => a.name + (a.required ? '*' : '')).join(', ')), h('td', {}, t.steps.map((x) => x.name).join(' → ')))))),
    link('#/pipelines', 'New template')];
  if (current) sections.push(runForm(current));
  sections.push(h('h2', {}, current ? `Template ${current.id} (TOML)` : 'New template (TOML)'), editor, h('div', {}, save), out);
  main.replaceChildren(...sections);
}

/** Starts `pipeline.start` for a template with its arguments and environment variables. */
function runForm(t) {
  const inputs = t.args.map((a) => h('label', {}, `${a.name}${a.required ? ' (required)' : ''}`,
    h('input', { name: a.name, value: a.default_value || '', required: a.required, title: a.description || '' })));
  const envs = t.envs.map((e) => h('label', {}, `env ${e}`, h('input', { name: e, 'data-env': 'true' })));
  const out = h('p', { role: 'status' });
  const form = h('form', { class: 'filters', 'aria-label': `Run ${t.id}` }, inputs, envs, h('button', { type: 'submit' }, 'Run'), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const args = {};
    const env = {};
    for (const el of form.querySelectorAll('input')) (el.dataset.env ? env : args)[el.name] = el.value;
    try {
      const [reg] = await allRegistrations({ function_id: 'pipeline.start' });
      if (!reg) throw new Error('no agent serves pipeline.start');
      const r = await rpc('InvokeJob', { game_id: reg.game_id, env: reg.env, function_id: 'pipeline.start', payload: { template_id: t.id, args, envs: env } });
      location.hash = `#/job/${encodeURIComponent(r.job_id)}`;
    } catch (ex) { out.textContent = `${ex.code || 'Error'}: ${ex.message}`; }
  });
  return h('div', {}, h('h2', {}, `Run ${t.id}`), form);
}

// ---- approvals -------------------------------------------------------------------------------

async function approvals(main) {
  const state = h('select', { 'aria-label': 'State' }, ['pending', 'approved', 'rejected', 'expired', ''].map((s) => h('option', { value: s }, s || 'any')));
  const body = h('tbody', {});
  const load = async () => {
    const r = await rpc('ListApprovals', { state: state.value, limit: 200 });
    body.replaceChildren(...r.approvals.map((a) => {
      const reason = h('input', { placeholder: 'reason', 'aria-label': `Reason for ${a.id}` });
      const decide = (approve) => async () => {
        try {
          await rpc('DecideApproval', { id: a.id, approve, reason: reason.value });
          toast(`${approve ? 'approved' : 'rejected'} ${a.id}`);
          load();
        } catch (ex) { toast(`${ex.code}: ${ex.message}`); }
      };
      const mine = a.requester === session.me.identity;
      return h('tr', { 'data-approval': a.id },
        h('td', {}, a.id), h('td', {}, `${a.kind} ${a.function_id}`), h('td', {}, a.requester),
        h('td', {}, h('div', { class: 'tree' }, tree(a.payload || {}))),
        h('td', {}, a.state, a.error_code ? h('div', { class: 'muted' }, `${a.error_code}: ${a.error}`) : '', a.job_id ? h('div', {}, link(`#/job/${a.job_id}`, a.job_id)) : ''),
        h('td', {}, `${a.approvers} ×${a.count}`), h('td', {}, when(a.expires_at)),
        h('td', {}, a.state === 'pending' && !mine ? [reason, h('button', { type: 'button', class: 'approve', onclick: decide(true) }, 'Approve'), ' ',
          h('button', { type: 'button', class: 'danger', onclick: decide(false) }, 'Reject')] : ''));
    }));
  };
  state.addEventListener('change', load);
  main.replaceChildren(h('h1', {}, 'Approvals'), h('div', { class: 'filters' }, state),
    h('table', { 'data-testid': 'approvals' }, h('thead', {}, h('tr', {}, ['Id', 'Call', 'Requester', 'Payload (masked)', 'State', 'Approvers', 'Expires', 'Decide'].map((t) => h('th', {}, t)))), body));
  await load();
}

// ---- audit -----------------------------------------------------------------------------------

async function audit(main) {
  const f = {
    who: h('input', { placeholder: 'who', 'aria-label': 'Who' }),
    target: h('input', { placeholder: 'function or target', 'aria-label': 'Target' }),
    action: h('input', { placeholder: 'action', 'aria-label': 'Action' }),
    outcome: h('input', { placeholder: 'outcome', 'aria-label': 'Outcome' }),
    since: h('input', { type: 'datetime-local', 'aria-label': 'Since' }),
  };
  const body = h('tbody', {});
  const chain = h('p', { 'data-testid': 'audit-chain' }, 'Verifying the chain…');
  const load = async () => {
    const r = await rpc('ListAudit', { who: f.who.value, target: f.target.value, action: f.action.value, outcome: f.outcome.value, since: f.since.value ? new Date(f.since.value).getTime() : 0, limit: 500 });
    body.replaceChildren(...r.records.map((line) => {
      const rec = JSON.parse(line);
      return h('tr', {}, h('td', {}, String(rec.seq)), h('td', {}, when(rec.at)), h('td', {}, rec.who), h('td', {}, rec.action),
        h('td', {}, rec.target), h('td', {}, rec.outcome), h('td', { class: 'hide-narrow' }, rec.on_behalf_of || ''));
    }));
  };
  for (const el of Object.values(f)) el.addEventListener('change', load);
  main.replaceChildren(h('h1', {}, 'Audit'), chain, h('div', { class: 'filters' }, Object.values(f)),
    h('table', { 'data-testid': 'audit' }, h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Who', 'Action', 'Target', 'Outcome', 'On behalf of'].map((t) => h('th', {}, t)))), body));
  await load();
  const resp = await fetch('/api/audit/verify', { credentials: 'same-origin' });
  const v = await resp.json();
  if (!resp.ok) chain.textContent = `chain not verified: ${v.message}`;
  else if (!v.enabled) chain.textContent = 'the audit log is off on this server';
  else chain.replaceChildren(h('span', { class: v.ok ? 'ok' : 'bad' }, v.ok
    ? `chain intact: ${v.records} records (seq ${v.first_seq} to ${v.head.seq}), checkpoint ${v.checkpoint_seq || 'none yet'}`
    : `chain broken: ${v.broken}`));
}

export const pages = {
  fleet, agent, functions, function: fn, jobs, job, pipelines, approvals, audit,
};
