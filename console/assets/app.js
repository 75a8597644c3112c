// Croupier console: the shell (sign-in, navigation, the API helpers). The pages are in views.js.
// Every call goes to /api/rpc/{Method} (the mesh's rpcs in protobuf JSON) or /api/stream/{Method}
// (Server-Sent Events); the server authorises each one exactly as it does a certificate.
import * as views from './views.js';

export const session = { me: null, csrf: '' };

/** An rpc that failed: the gRPC code, the message and the ErrorInfo reason. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || '';
    this.reason = body.reason || '';
    this.details = body.details || {};
  }
}

/** Requests that change nothing (sign-in aside, which may be repeated) are sent again when the
 *  network fails under them, e.g. the browser's "network changed" abort. */
const repeatable = (path) => path === '/api/login' || /^\/api\/rpc\/(Get|List|Query|Test)/.test(path);

async function send(path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (session.csrf) headers['X-CSRF-Token'] = session.csrf;
  const init = { method: 'POST', headers, body: JSON.stringify(body || {}), credentials: 'same-origin' };
  let resp;
  for (let attempt = 1; ; attempt += 1) {
    try {
      resp = await fetch(path, init);
      break;
    } catch (ex) {
      if (!repeatable(path) || attempt >= 3) throw ex;
      await new Promise((resolve) => { setTimeout(resolve, 300 * attempt); });
    }
  }
  const data = await resp.json().catch(() => ({ message: `HTTP ${resp.status}` }));
  if (!resp.ok) {
    if (resp.status === 401 && path !== '/api/login') showLogin(data.message);
    throw new ApiError(resp.status, data);
  }
  return data;
}

/** Calls an rpc with a request object; resolves to the response object. */
export function rpc(method, request) {
  return send(`/api/rpc/${method}`, request);
}

/** Opens a streaming rpc as an EventSource; `onMessage` gets each message object. */
export function stream(method, request, onMessage, onError) {
  const url = `/api/stream/${method}?request=${encodeURIComponent(JSON.stringify(request || {}))}`;
  const es = new EventSource(url);
  es.onmessage = (e) => onMessage(JSON.parse(e.data), e.lastEventId);
  es.addEventListener('error', (e) => {
    if (e.data) {
      es.close();
      if (onError) onError(JSON.parse(e.data));
    }
  });
  return es;
}

/** Builds an element: h('a', {href: '#'}, 'text', child…). Text is never parsed as HTML. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A short message at the corner of the screen. */
export function toast(text) {
  const el = h('div', {}, text);
  document.getElementById('toast').append(el);
  setTimeout(() => el.remove(), 5000);
}

/** Formats unix milliseconds. */
export function when(ms) {
  return ms ? new Date(Number(ms)).toLocaleString() : '—';
}

export const isAdmin = () => session.me && session.me.role === 'admin';

function showLogin(message) {
  session.me = null;
  session.csrf = '';
  document.getElementById('top').hidden = true;
  const main = document.getElementById('main');
  const err = h('p', { class: 'errors', 'data-testid': 'login-error', role: 'alert' }, message || '');
  const user = h('input', { id: 'login-user', name: 'user', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'login', 'aria-label': 'Sign in' },
    h('h1', {}, 'Croupier console'),
    h('label', { for: 'login-user' }, 'User', user),
    h('label', { for: 'login-password' }, 'Password', pass),
    h('button', { type: 'submit', id: 'login-submit' }, 'Sign in'),
    err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      signedIn(await send('/api/login', { user: user.value, password: pass.value }));
    } catch (ex) {
      err.textContent = ex.message;
    }
  });
  main.replaceChildren(form);
  user.focus();
}

function signedIn(me) {
  session.me = me;
  session.csrf = me.csrf || '';
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = `${me.name} (${me.role})`;
  if (!location.hash || location.hash === '#/') location.hash = '#/fleet';
  else route();
}

let cleanup = [];
/** Registers something to close when the page changes (an EventSource, a timer). */
export function onLeave(fn) {
  cleanup.push(fn);
}

async function route() {
  if (!session.me) return;
  for (const fn of cleanup) fn();
  cleanup = [];
  const [page, ...args] = location.hash.replace(/^#\//, '').split('/').map(decodeURIComponent);
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('active', a.getAttribute('href') === `#/${page}`);
  }
  const view = views.pages[page] || views.pages.fleet;
  const main = document.getElementById('main');
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    await view(main, ...args);
    // Keyboard and screen-reader users land on the new page's content, as after a page load.
    if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
  } catch (ex) {
    if (ex instanceof ApiError && ex.status === 401) return;
    main.replaceChildren(h('p', { class: 'errors', role: 'alert' }, `${ex.code || 'Error'}: ${ex.message}`));
  }
}

async function start() {
  window.addEventListener('hashchange', route);
  document.getElementById('logout').addEventListener('click', async () => {
    await send('/api/logout', {}).catch(() => {});
    showLogin('Signed out.');
  });
  const resp = await fetch('/api/me', { credentials: 'same-origin' });
  if (resp.ok) signedIn(await resp.json());
  else showLogin('');
}

start();
