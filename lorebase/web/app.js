// lorebase's web client: the core's screens (welcome, verify, reset, files, account) are drawn
// here from the JSON API, and each loaded application adds its own through `lorebase.screen`
// (its scripts are listed by GET /apps). User content is only ever set as text (never as
// HTML), so a note or a file name cannot inject markup.
'use strict';
// The helpers (api, h, flash, form, words) are common.js's, loaded before this script.

// The auth routes run before the chain's CSRF step and take no csrf field: api() must not add
// the session's token to them when the page happens to be logged in.
const BEFORE_CSRF = {csrf: false};

function show(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes);
  const nav = document.getElementById('nav');
  nav.hidden = !state.me;
  document.getElementById('who').textContent = state.me ? state.me.username : '';
  // GET /auth/me says who is an admin; the admin page checks again, and so does every admin route
  document.getElementById('admin-link').hidden = !(state.me && state.me.admin);
}

// On the forms that ask for a password alone, the API's `auth` means that password was wrong:
// "Wrong username or password." would name a field the form does not have.
async function withPassword(call) {
  try {
    return await call;
  } catch (e) {
    if (e instanceof ApiError && e.code === 'auth') e.message = 'Wrong password.';
    throw e;
  }
}

// A table in a box of its own: on a narrow screen the box scrolls sideways, so no cell has to
// break a word to fit.
function table(id, head, rows) {
  return h('div', {class: 'scroll'}, h('table', {id}, h('tr', {}, head.map((t) => h('th', {}, t))), rows));
}

// -- screens -----------------------------------------------------------------------------

function welcome() {
  const login = form('login', 'Log in', [
    ['username', 'Username or email', 'text', {autocomplete: 'username'}],
    ['password', 'Password', 'password', {autocomplete: 'current-password'}],
  ], 'Log in', async (v) => {
    const reply = await api('POST', '/auth/login', {username: v.username, password: v.password}, BEFORE_CSRF);
    state.csrf = reply.csrf;
    state.me = await api('GET', '/auth/me');
    flash('');
    go();
  }, h('p', {}, h('a', {href: '#', id: 'forgot', onclick: (e) => { e.preventDefault(); recover(); }},
    'Forgot your password?'), ' · ', h('a', {href: '#', id: 'no-mail', onclick: (e) => { e.preventDefault(); resend(); }},
    'Didn\u2019t get the verification mail?')));
  const signup = form('signup', 'Sign up', [
    ['username', 'Username', 'text', {autocomplete: 'username'}],
    ['email', 'Email', 'email', {autocomplete: 'email'}],
    ['password', 'Password (8 or more characters)', 'password', {autocomplete: 'new-password'}],
  ], 'Create account', async (v) => {
    await api('POST', '/auth/signup', v, BEFORE_CSRF);
    signup.reset();
    flash('Account created. We sent you an email: open its link to verify your address, then log in.', 'ok');
  });
  show(h('div', {class: 'columns'}, login, signup));
}

function recover() {
  show(form('recover', 'Reset your password', [['username', 'Username or email', 'text']], 'Send me a link',
    async (v) => {
      await api('POST', '/auth/recover', v, BEFORE_CSRF);
      flash('If that account exists, we sent it an email with a link to choose a new password.', 'ok');
      welcome();
    }, h('p', {}, h('a', {href: '/'}, 'Back to log in'))));
}

// A new verification mail (POST /auth/verify/resend): the reply is the same whether the
// account exists or not, so the words are too.
function resendForm(title) {
  return form('resend', title, [['username', 'Username or email', 'text', {autocomplete: 'username'}]],
    'Send me a new link', async (v) => {
      await api('POST', '/auth/verify/resend', {username: v.username}, BEFORE_CSRF);
      history.replaceState(null, '', '/');
      flash('If that account exists and its email is not verified yet, we sent it a new link.', 'ok');
      welcome();
    }, h('p', {}, h('a', {href: '/'}, 'Back to log in')));
}

function resend() {
  show(resendForm('Send the verification mail again'));
}

// A verification link that is mangled, used or expired: it names no account (what it seems
// to name may be made up) and offers a new one.
function badVerifyLink() {
  state.me = null;  // a page of its own, as the link's others are: no nav
  show(h('section', {id: 'bad-link'}, h('h2', {}, 'This link is not valid'),
    h('p', {}, 'It may be mistyped, already used, or expired. We can send you a new one.')),
  resendForm('Send me a new verification link'));
}

// A verification token is `<username>.<43 URL-safe characters>` (identity/tokens.py): a link
// that is not has been cut or mistyped, and what it seems to name is not an account.
const VERIFY_TOKEN = /^([a-z0-9_.-]{3,32})\.[A-Za-z0-9_-]{43}$/;

// The verification link: it names the account and acts only on a click. The token proves
// the mailbox; the account's password (or being logged in as it) proves the account.
async function verifyPage(token) {
  const shape = VERIFY_TOKEN.exec(token);
  if (!shape) return badVerifyLink();
  const account = shape[1];
  let me = null;
  try {
    ({csrf: state.csrf, me} = await api('GET', '/auth/session'));  // 200 with nulls when logged out
  } catch (e) { /* a cookie the server refuses: not logged in */ }
  const own = me && me.username === account;
  const done = (message) => {
    history.replaceState(null, '', '/');
    flash(message, 'ok');
    if (state.me) go(); else welcome();
  };
  const fields = own ? [] : [['password', `Password of "${account}"`, 'password', {autocomplete: 'current-password'}]];
  const release = h('button', {type: 'button', id: 'not-me', class: 'danger', onclick: async () => {
    try {
      await api('POST', '/auth/releaseEmail', {token}, BEFORE_CSRF);
      done(`The address is no longer held by "${account}". You can sign up with it.`);
    } catch (e) {
      if (e.code === 'token') return badVerifyLink();
      flash(e.message, 'error');
    }
  }}, 'This was not me');
  state.me = me;
  show(form('verify', `Verify the email of "${account}"`, fields, 'Verify my email', async (v) => {
    let reply;
    try {
      reply = await withPassword(api('POST', '/auth/verifyEmail', own ? {token} : {token, password: v.password}, BEFORE_CSRF));
    } catch (e) {
      if (e.code === 'token') return badVerifyLink();
      throw e;
    }
    // with the password, the reply logs this browser in as the account (its csrf, as a login's)
    if (reply && reply.csrf) state.csrf = reply.csrf;
    if (state.me || (reply && reply.csrf)) state.me = await api('GET', '/auth/me');
    done('Your email is verified.' + (state.me ? '' : ' You can log in.'));
  }, h('p', {}, `Did not sign up as "${account}"? `, release)));
}

// The invite link: the token names the invited address; the page asks for a username and a
// password and signs up with the token (which works once, for that address only).
function invitePage(token) {
  let email = '';
  try {
    const head = token.slice(0, token.indexOf('.')).replace(/-/g, '+').replace(/_/g, '/');
    email = new TextDecoder().decode(Uint8Array.from(atob(head), (c) => c.charCodeAt(0)));
  } catch (e) { /* a mangled link: the server will say so */ }
  const signup = form('invite-signup', `Sign up as ${email || 'invited'}`, [
    ['username', 'Username', 'text', {autocomplete: 'username'}],
    ['password', 'Password (8 or more characters)', 'password', {autocomplete: 'new-password'}],
  ], 'Create account', async (v) => {
    await api('POST', '/auth/signup', {username: v.username, email, password: v.password, invite: token}, BEFORE_CSRF);
    history.replaceState(null, '', '/');
    flash('Account created, with your email verified. Log in.', 'ok');
    welcome();
  }, h('p', {}, h('a', {href: '/'}, 'Back to log in')));
  show(signup);
}

function resetPage(token) {
  show(form('reset', 'Choose a new password', [
    ['password', 'New password (8 or more characters)', 'password', {autocomplete: 'new-password'}],
  ], 'Set password', async (v) => {
    await api('POST', '/auth/reset', {token, password: v.password}, BEFORE_CSRF);
    history.replaceState(null, '', '/');
    flash('Your password is changed. Log in with it.', 'ok');
    welcome();
  }));
}

function fileLink(file) {
  return h('a', {href: `/files/${file.id}`, download: file.name, class: 'file'}, file.name);
}

async function filesScreen() {
  const files = await api('GET', '/files');
  const input = h('input', {type: 'file', name: 'file', required: true});
  const upload = form('upload', 'Upload a file', [], 'Upload', async () => {
    if (!input.files.length) throw new ApiError(400, {error: 'validation', path: 'file'});
    const data = new FormData();
    data.append('file', input.files[0]);
    const stored = await api('POST', '/files', data);
    flash(`Uploaded ${stored.name}.`, 'ok');
    go('files');
  });
  upload.insertBefore(h('label', {}, 'File', input), upload.querySelector('button'));
  const rows = files.map((f) => h('tr', {'data-id': f.id},
    h('td', {class: 'name', title: f.name}, fileLink(f)), h('td', {}, size(f.size)), h('td', {}, f.type),
    h('td', {}, h('button', {type: 'button', class: 'delete', onclick: async () => {
      if (!confirm(`Delete ${f.name}?`)) return;
      try { await api('POST', '/files/delete', {id: f.id}); go('files'); } catch (e) { flash(e.message, 'error'); }
    }}, 'Delete'))));
  show(upload, h('h2', {}, 'Your files'), files.length
    ? table('files', ['Name', 'Size', 'Type', ''], rows)
    : h('p', {class: 'muted'}, 'No files yet.'));
}

function size(bytes) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${i ? bytes.toFixed(1) : bytes} ${units[i]}`;
}

async function sessionsSection() {
  const sessions = await api('GET', '/auth/sessions');
  const end = async (body, what) => {
    try {
      const {ended} = await api('POST', '/auth/sessions/end', body);
      flash(ended ? `Logged out ${what}.` : 'That session had already ended.', 'ok');
    } catch (e) { flash(e.message, 'error'); }
    go('account');
  };
  const when = (ms) => new Date(ms).toLocaleString();
  const rows = sessions.map((s) => h('tr', {'data-handle': s.handle, class: s.current ? 'current' : ''},
    h('td', {}, s.agent), h('td', {}, s.ip), h('td', {}, when(s.last)), h('td', {}, when(s.created)),
    h('td', {}, s.current ? h('span', {class: 'muted'}, 'this one')
      : h('button', {type: 'button', class: 'end', onclick: () => end({handle: s.handle}, 'that session')},
        'Log out'))));
  const others = sessions.length > 1
    ? h('button', {type: 'button', id: 'end-others', onclick: () => {
      if (confirm('Log out every other session?')) end({others: true}, 'every other session');
    }}, 'Log out everywhere else') : '';
  return h('section', {id: 'sessions'}, h('h3', {}, 'Where you are logged in'),
    table('session-list', ['Browser', 'Address', 'Last used', 'Logged in', ''], rows), others);
}

async function accountScreen() {
  const change = form('change-password', 'Change your password', [
    ['old', 'Current password', 'password', {autocomplete: 'current-password'}],
    ['new', 'New password', 'password', {autocomplete: 'new-password'}],
  ], 'Change password', async (v) => {
    await withPassword(api('POST', '/auth/changePassword', {old: v.old, new: v.new}));
    flash('Your password is changed. Your other sessions were logged out.', 'ok');
    await go('account');  // the list of sessions, without the ones just ended
  });
  // The new address becomes the account's only once its link is opened: until then the
  // account keeps (and is told at) the old one.
  const email = form('change-email', 'Change your email', [
    ['email', 'New email', 'email', {autocomplete: 'email'}],
    ['password', 'Password', 'password', {autocomplete: 'current-password'}],
  ], 'Change email', async (v) => {
    await withPassword(api('POST', '/auth/changeEmail', {password: v.password, email: v.email}));
    email.reset();
    flash(`We sent a link to ${v.email}: open it to make it your email. Until then it stays ${state.me.email}.`, 'ok');
  });
  const destroy = form('destroy', 'Delete your account', [
    ['password', 'Password', 'password', {autocomplete: 'current-password'}],
  ], 'Delete my account and everything in it', async (v) => {
    if (!confirm('Delete your account and everything in it? This cannot be undone.')) return;
    await withPassword(api('POST', '/auth/destroy', {password: v.password}));
    state.csrf = null;
    state.me = null;
    flash('Your account is deleted.', 'ok');
    welcome();
  });
  destroy.querySelector('button[type=submit]').classList.add('danger');
  const me = state.me;
  const sessions = await sessionsSection();
  show(h('h2', {}, 'Account'),
    h('p', {}, `${me.username} · ${me.email} · `, me.verified ? 'email verified' : 'email not verified yet'),
    sessions, change, email, destroy);
}

// -- screens by name: the core's, and those the applications add ----------------------------

const SCREENS = new Map([['files', filesScreen], ['account', accountScreen]]);
const added = [];  // the applications' screens, in the order their scripts added them

// The screen a login lands on: the first application's, else the files.
function home() {
  return added.length ? added[0] : 'files';
}

// Called by an application's script (GET /apps lists it): a tab in the nav, before the core's,
// that draws `render()` into the page. `render` may be async; what it throws is shown in words.
function screen({name, title, render}) {
  if (!/^[a-z][a-z0-9_-]{0,31}$/.test(name || '') || typeof render !== 'function') {
    throw new Error(`lorebase.screen: a name of a-z0-9_- and a render function, not ${name}`);
  }
  if (SCREENS.has(name)) throw new Error(`lorebase.screen: "${name}" is taken`);
  SCREENS.set(name, render);
  added.push(name);
  const tab = h('a', {class: 'tab', href: `/#${name}`, 'data-go': name}, title || name);
  document.getElementById('nav').insertBefore(tab, document.querySelector('#nav [data-go="files"]'));
}

// The applications' styles and scripts, in APPS order; resolves once every script has run
// (or failed to load: the core's screens work without it).
async function loadApps() {
  let apps = [];
  try {
    apps = await api('GET', '/apps');
  } catch (e) {
    return;
  }
  const loads = [];
  for (const app of apps) {
    for (const href of app.styles) document.head.append(h('link', {rel: 'stylesheet', href}));
    for (const src of app.scripts) {
      const script = h('script', {src});
      script.async = false;  // run in the order listed, like the page's own deferred scripts
      loads.push(new Promise((resolve) => {
        script.addEventListener('load', resolve);
        script.addEventListener('error', () => { report(`could not load ${src}`, src); resolve(); });
      }));
      document.head.append(script);
    }
  }
  await Promise.all(loads);
}

let appsLoaded = Promise.resolve();

// -- addresses: each screen is `/#<name>` --------------------------------------------------
// A fragment, not a path: it never reaches the server, so the JSON routes (`GET /files`, an
// app's) keep their paths, and an application's screen has an address without a route of its own.
// The nav's tabs are links to those addresses; Back, Forward and reload go through them.

// The screen the address names ('' for none).
function addressed() {
  try {
    return decodeURIComponent(location.hash.slice(1));
  } catch (e) {
    return '';  // a mangled fragment names no screen
  }
}

// Draws a screen: `name`, else the one the address names, else the home screen. The address
// follows: a new history entry when the screen changes (so Back returns to the last one),
// the same entry when there was no screen in it yet (the first one after a login).
async function go(name) {
  await appsLoaded;
  if (!state.me) return welcome();
  if (!SCREENS.has(name)) name = SCREENS.has(addressed()) ? addressed() : home();
  if (location.pathname !== '/' || addressed() !== name) {
    if (SCREENS.has(addressed())) history.pushState(null, '', `/#${name}`);
    else history.replaceState(null, '', `/#${name}`);
  }
  document.querySelectorAll('[data-go]').forEach((b) => {
    if (b.dataset.go === name) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  });
  try {
    await SCREENS.get(name)();
  } catch (e) {
    flash(e.message, 'error');
    if (!state.me) welcome();
  }
}

// What an application's script works with (its screens use the same helpers as the core's).
const lorebase = Object.freeze({
  screen, go, show, api, h, form, flash, fileLink, ApiError, state,
  // its error codes and fields in words, as common.js has the core's
  words(codes, fields) { Object.assign(WORDS, codes || {}); Object.assign(FIELDS, fields || {}); },
});

async function start() {
  appsLoaded = loadApps();
  // a tab's link changes the address, which draws its screen; the tab of the screen already
  // shown changes nothing, so it redraws it (a plain click; a middle click opens a new tab)
  document.getElementById('nav').addEventListener('click', (e) => {
    const tab = e.target.closest('a[data-go]');
    if (!tab || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    if (tab.dataset.go === addressed()) {
      e.preventDefault();
      flash('');
      go(tab.dataset.go);
    }
  });
  window.addEventListener('hashchange', () => { flash(''); go(); });
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('POST', '/auth/logout', {}); } catch (e) { /* the session is gone either way */ }
    state.csrf = null;
    state.me = null;
    history.replaceState(null, '', '/');  // the next login lands on its home screen
    flash('You are logged out.', 'ok');
    welcome();
  });
  const token = new URLSearchParams(location.search).get('token');
  if (location.pathname === '/verify' && token) return verifyPage(token);
  if (location.pathname === '/reset') return token ? resetPage(token) : recover();  // the mail's bare /reset: ask for a link
  const invite = new URLSearchParams(location.search).get('invite');
  if (location.pathname === '/signup' && invite) return invitePage(invite);
  // GET /auth/session answers 200 when logged out: a first visit logs no 4xx
  try {
    ({csrf: state.csrf, me: state.me} = await api('GET', '/auth/session'));
  } catch (e) {
    state.me = null;
  }
  if (!state.me) return welcome();
  go();
}

start();
