// What lorebase's pages share (the web client and the admin page): the API call with the
// session's CSRF token, errors in words, building elements (text only, never HTML), the
// status line, and browser errors reported to the server.
'use strict';

const state = {csrf: null, me: null};

// What the API's error codes mean, in words.
const WORDS = {
  auth: 'Wrong username or password.',
  verify: 'Please verify your email first: open the link we mailed you.',
  rate: 'Too many attempts. Please wait a little and try again.',
  username: 'That username is taken.',
  email: 'That email already has an account.',
  whitelist: 'Sign-up is by invitation only, and this email is not on the list.',
  invite: 'This invitation is invalid, already used, revoked or expired. Ask for a new one.',
  token: 'This link is invalid, already used, or expired. Ask for a new one.',
  csrf: 'Your session went stale. Please reload the page.',
  origin: 'This request came from another site and was refused.',
  nocookie: 'Please log in.',
  session: 'Your session ended. Please log in again.',
  tampered: 'Your session cookie was not valid. Please log in again.',
  quota: 'Your storage is full. Delete some files first.',
  size: 'That is too large.',
  storage: 'The server has no room for this file right now. It has been reported.',
  notfound: 'Not found: it may have been deleted.',
  redis: 'The server cannot reach its database right now. Try again in a moment.',
  server: 'Something went wrong on the server. It has been reported.',
  network: 'Cannot reach the server. Check your connection.',
};
const FIELDS = {
  username: 'The username must be 3 to 32 characters: letters, digits, _ . or -.',
  email: 'Please enter a valid email address.',
  password: 'The password must be 8 to 128 characters and not a common password.',
  new: 'The new password must be 8 to 128 characters and not a common password.',
  old: 'Please enter your current password.',
  file: 'Please choose a file.',
};

// How long `seconds` is, in words: "45 seconds", "15 minutes", "2 hours".
function duration(seconds) {
  const unit = (n, name) => `${n} ${name}${n === 1 ? '' : 's'}`;
  if (seconds < 60) return unit(seconds, 'second');
  if (seconds < 3600) return unit(Math.ceil(seconds / 60), 'minute');
  return unit(Math.ceil(seconds / 3600), 'hour');
}

// `wait`: the seconds of a 429's Retry-After, if it had one.
function words(status, body, wait) {
  const code = body && body.error;
  if (code === 'validation') return FIELDS[body.path] || `Please check the field "${body.path || 'form'}".`;
  if (code === 'rate' && wait > 0) return `Too many attempts. Please wait ${duration(wait)} and try again.`;
  return WORDS[code] || `The server answered ${status}${code ? ` (${code})` : ''}.`;
}

class ApiError extends Error {
  constructor(status, body, wait) {
    super(words(status, body, wait));
    this.status = status;
    this.code = body && body.error;
    this.wait = wait || 0;
  }
}

// `{csrf: false}` for the routes before the CSRF step (signup, verifyEmail...): their bodies
// take no csrf field, and a logged-in page (a verify link opened while logged in) must not add one.
async function api(method, path, body, {csrf = true} = {}) {
  const options = {method, headers: {}, credentials: 'same-origin'};
  if (body instanceof FormData) {
    options.body = body;
    options.headers['X-CSRF-Token'] = state.csrf || '';
  } else if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(csrf && state.csrf && method !== 'GET' ? {...body, csrf: state.csrf} : body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, {error: 'network'});
  }
  const data = (response.headers.get('content-type') || '').startsWith('application/json') ? await response.json() : null;
  if (!response.ok) {
    if (response.status === 403 && ['session', 'nocookie', 'tampered'].includes(data && data.error)) {
      state.csrf = null;
      state.me = null;
    }
    const wait = response.status === 429 ? parseInt(response.headers.get('Retry-After') || '', 10) : 0;
    throw new ApiError(response.status, data, Number.isFinite(wait) ? wait : 0);
  }
  return data;
}

// h('p', {class: 'x', onclick: f}, 'text', child) → an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else if (value !== false && value != null) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child != null) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function flash(message, kind) {
  const box = document.getElementById('flash');
  box.textContent = message;
  box.className = kind || 'info';
  box.hidden = !message;
}

// A form whose submit calls `action(values)`; errors are shown in words above it.
function form(id, title, fields, submitLabel, action, extra) {
  const error = h('p', {class: 'error', role: 'alert', hidden: true});
  const inputs = fields.map(([name, label, type, attrs]) =>
    h('label', {}, label, h('input', {name, type: type || 'text', required: true, ...(attrs || {})})));
  const button = h('button', {type: 'submit'}, submitLabel);
  const el = h('form', {id, onsubmit: async (event) => {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    const values = Object.fromEntries(new FormData(el).entries());
    try {
      await action(values);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }}, h('h2', {}, title), error, ...inputs, button, extra || null);
  return el;
}

// Browser errors go to the server's notify funnel (POST /error).
function report(message, url, line, column, stack) {
  fetch('/error', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({
    message: String(message).slice(0, 2000), url: String(url || location.href).slice(0, 2048),
    line: Number(line) || 0, column: Number(column) || 0, stack: String(stack || '').slice(0, 8000),
  })}).catch(() => {});
}
window.addEventListener('error', (e) => report(e.message, e.filename, e.lineno, e.colno, e.error && e.error.stack));
window.addEventListener('unhandledrejection', (e) => report(e.reason && e.reason.message || e.reason, location.href,
  0, 0, e.reason && e.reason.stack));

