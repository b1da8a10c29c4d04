// lorebase's admin page (/admin): users, invites, logs, charts and backups, drawn here from
// the admin JSON routes. The helpers (api, h, form, flash) are common.js's; the charts are
// uPlot's (vendor/uplot). Every admin route answers only an admin: this page holds no data
// of its own, and shows a non-admin the words "not an admin", never an admin reply.
'use strict';

Object.assign(WORDS, {
  self: 'You cannot do that to your own account: another admin has to (so the last admin cannot lock everyone out).',
  admin: 'This account is not an admin.',
  user: 'No such user: it may have been deleted.',
  lastadmin: 'Refused: it would leave no enabled admin (another admin may have just done the same to you).',
  configadmin: 'This account is an admin through the ADMINS setting: taking its flag changes nothing. Change ADMINS, or disable it.',
  invite: 'There is no such invite: it was used, revoked or has expired.',
  email: 'An account already holds that email.',
  busy: 'A backup is running or about to start. Wait for it to finish.',
  s3: 'The backup store (S3) cannot be reached right now.',
});

// what a screen leaves running, stopped by the next; `epoch` counts the screens opened, so a
// redraw whose replies come after another screen opened draws nothing; `keepFlash`: the next
// screen drawn on a change of address keeps the status line (an action's outcome)
const ui = {timer: null, charts: [], epoch: 0, keepFlash: false};

function show(...nodes) {
  document.getElementById('main').replaceChildren(...nodes);
  document.getElementById('nav').hidden = !(state.me && state.me.admin);
  document.getElementById('who').textContent = state.me ? state.me.username : '';
}

// times: unix ms, as most routes give them (a user's `created` and a backup's are unix s: * 1000)
const when = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
const yes = (value, word) => h('span', {class: value ? 'yes' : 'no'}, value ? word : '—');

// `digits`: the decimals to show (an axis asks for more when its ticks would read the same)
function bytes(n, digits) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${digits != null ? n.toFixed(digits) : i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

// a table in a wrapper that scrolls sideways when it is wider than the screen (admin.css)
function table(id, heads, rows, cls) {
  return scroller(h('table', {id, class: cls}, h('thead', {}, h('tr', {}, heads.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows)));
}

const scroller = (tableElement) => h('div', {class: 'scroll'}, tableElement);

// -- logging in ---------------------------------------------------------------------------

function loginScreen() {
  show(form('login', 'Log in as an admin', [
    ['username', 'Username or email', 'text', {autocomplete: 'username'}],
    ['password', 'Password', 'password', {autocomplete: 'current-password'}],
  ], 'Log in', async (v) => {
    state.csrf = (await api('POST', '/auth/login', {username: v.username, password: v.password})).csrf;
    state.me = await api('GET', '/auth/me');
    flash('');
    enter();
  }, h('p', {}, h('a', {href: '/'}, 'The web client'))));
}

function notAdminScreen() {
  show(h('h2', {}, 'Not an admin'),
    h('p', {id: 'not-admin'}, `You are logged in as ${state.me.username}, which is not an admin account. `,
      'This page is for admins only.'),
    h('p', {id: 'become-admin'}, 'To become one, run ', h('code', {}, `lorebase admin add ${state.me.username}`),
      ' on the server, then reload this page.'),
    h('p', {}, h('a', {href: '/', id: 'to-app'}, 'Back to the web client'), ' · ',
      h('button', {type: 'button', id: 'logout-plain', onclick: logout}, 'Log out')));
}

// After the start-up check or a login: the screen the address names (a reload stays on it).
function enter() {
  if (!state.me) return loginScreen();
  if (!state.me.admin) return notAdminScreen();
  return draw(true);
}

async function logout() {
  try { await api('POST', '/auth/logout', {}); } catch (e) { /* the session is gone either way */ }
  state.csrf = null;
  state.me = null;
  flash('You are logged out.', 'ok');
  enter();
}

// -- users --------------------------------------------------------------------------------

async function usersScreen() {
  const body = h('tbody');
  const input = h('input', {name: 'q', type: 'search', autocomplete: 'off', maxlength: 254});
  const count = h('p', {class: 'muted', id: 'users-count'});
  const more = h('button', {type: 'button', id: 'more-users', hidden: true}, 'More');
  let query = '';
  let next = null;
  const load = async (after) => {
    const params = new URLSearchParams();
    if (query) params.set('q', query);
    if (after) params.set('after', after);
    const page = await api('GET', `/admin/users?${params}`);
    body.append(...page.users.map(userRow));
    next = page.next;
    more.hidden = !next;
    count.textContent = `${body.children.length} user${body.children.length === 1 ? '' : 's'}${next ? ' so far' : ''}.`;
  };
  const search = h('form', {id: 'user-search', class: 'toolbar', onsubmit: async (e) => {
    e.preventDefault();
    query = input.value.trim();
    body.replaceChildren();
    try { await load(null); } catch (error) { flash(error.message, 'error'); }
  }}, h('label', {}, 'Username or email starts with', input), h('button', {type: 'submit'}, 'Search'));
  more.addEventListener('click', async () => {
    try { await load(next); } catch (error) { flash(error.message, 'error'); }
  });
  show(h('h2', {}, 'Users'), search, count,
    scroller(h('table', {id: 'users'}, h('thead', {}, h('tr', {}, ['Username', 'Email', 'Created', 'Verified', 'Admin',
      'Disabled'].map((x) => h('th', {}, x)))), body)), more);
  await load(null);
}

function userRow(u) {
  return h('tr', {'data-username': u.username},
    h('td', {}, h('a', {href: `#users/${encodeURIComponent(u.username)}`, class: 'open'}, u.username)),
    h('td', {}, u.email), h('td', {}, when(u.created * 1000)), h('td', {}, yes(u.verified, 'verified')),
    h('td', {}, yes(u.admin, 'admin')), h('td', {}, u.disabled ? h('span', {class: 'bad'}, 'disabled') : '—'));
}

async function userScreen(name) {
  const u = await api('GET', `/admin/users/${encodeURIComponent(name)}`);
  const action = (id, label, path, body, question, done, cls) => h('button', {type: 'button', id, class: cls,
    onclick: async () => {
      if (question && !confirm(question)) return;
      try {
        const reply = await api('POST', path, {username: u.username, ...body});
        flash(typeof done === 'function' ? done(reply) : done, 'ok');
        if (path === '/admin/delete') return go('users', true);
      } catch (e) {
        flash(e.message, 'error');
        if (e.code === 'user') return go('users', true);
      }
      try { await userScreen(u.username); } catch (e) { flash(e.message, 'error'); }
    }}, label);
  const actions = h('div', {class: 'actions'},
    u.admin
      ? action('unmake-admin', 'Remove admin', '/admin/admin', {value: false},
        `Take the admin rights of ${u.username}?`, `${u.username} is no longer an admin.`)
      : action('make-admin', 'Make admin', '/admin/admin', {value: true}, null, `${u.username} is an admin now.`),
    u.disabled
      ? action('enable', 'Enable', '/admin/disable', {value: false}, null, `${u.username} can log in again.`)
      : action('disable', 'Disable', '/admin/disable', {value: true},
        `Disable ${u.username}? Their sessions end at once and they cannot log in.`,
        `${u.username} is disabled: their sessions ended.`, 'delete'),
    action('revoke', 'End all sessions', '/admin/revoke', {},
      `End every session of ${u.username}?`, (r) => `Ended ${r.revoked} session${r.revoked === 1 ? '' : 's'} of ${u.username}.`),
    action('delete-user', 'Delete user', '/admin/delete', {},
      `Delete ${u.username}, their files and all their data? This cannot be undone.`, `${u.username} is deleted.`, 'danger'));
  const fields = [
    ['Username', u.username], ['Email', u.email], ['Created', when(u.created * 1000)],
    ['Verified', u.verified ? 'yes' : 'no'], ['Admin', u.admin ? 'yes' : 'no'], ['Disabled', u.disabled ? 'yes' : 'no'],
    ['Last login', when(u.last_login)], ['Files', `${u.files} (${bytes(u.bytes)})`],
    ...(u.extra || []).map((name) => [name[0].toUpperCase() + name.slice(1).replace(/_/g, ' '), String(u[name])]),
  ];
  const sessions = u.sessions.map((s) => h('tr', {}, h('td', {}, when(s.created)), h('td', {}, when(s.last)),
    h('td', {}, s.ip), h('td', {}, s.agent)));
  show(h('p', {}, h('a', {href: '#users', id: 'back-users'}, '← Users')),
    h('h2', {}, `User ${u.username}`),
    h('dl', {class: 'record', id: 'user-record'}, fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    actions,
    h('h3', {}, 'Live sessions'),
    sessions.length ? table('user-sessions', ['Logged in', 'Last used', 'Address', 'Browser'], sessions)
      : h('p', {class: 'muted', id: 'user-sessions'}, 'No live session.'));
}

// -- invites ------------------------------------------------------------------------------

async function invitesScreen() {
  const invites = await api('GET', '/admin/invites');
  const send = form('invite-form', 'Invite someone', [['email', 'Email', 'email', {autocomplete: 'off'}]],
    'Send the invite', async (v) => {
      await api('POST', '/admin/invites', {email: v.email});
      flash(`Invited ${v.email}: the mail is on its way.`, 'ok');
      await invitesScreen();
    });
  const rows = invites.map((i) => h('tr', {'data-email': i.email}, h('td', {}, i.email), h('td', {}, when(i.created)),
    h('td', {}, when(i.expires)), h('td', {}, i.by || '—'),
    h('td', {}, h('button', {type: 'button', class: 'delete revoke', onclick: async () => {
      if (!confirm(`Revoke the invite of ${i.email}? Its link stops working.`)) return;
      try {
        await api('POST', '/admin/invites/revoke', {email: i.email});
        flash(`The invite of ${i.email} is revoked.`, 'ok');
      } catch (e) { flash(e.message, 'error'); }
      go('invites', true);
    }}, 'Revoke'))));
  show(send, h('h2', {}, 'Pending invites'), rows.length
    ? table('invites', ['Email', 'Sent', 'Expires', 'By', ''], rows)
    : h('p', {class: 'muted', id: 'invites'}, 'No pending invite.'));
}

// -- logs ---------------------------------------------------------------------------------

// the event types the filter suggests: each is a name lorebase passes to notify() (a `task <name>`
// and a `<queue> done` are the scheduler's and the queues' own), so each can be found
const EVENTS = ['reply', 'error', 'client error', 'signup', 'login', 'lockout', 'tampered', 'destroy', 'password changed',
  'password reset', 'email verified', 'invite', 'invite revoked', 'sessions ended', 'mail done', 'mail failed',
  'mail dead', 'task backup', 'task backup failed', 'task check', 'beat alert', 'beat ok', 'check problem', 'start',
  'stop', 'worker exit', 'redis down', 'flood', 'admin disable', 'admin delete', 'admin flag', 'admin revoke',
  'admin unlock', 'admin backup'];
const streamTime = (id) => Number(String(id).split('-')[0]);

function eventRow(e) {
  const rest = {...e};
  for (const key of ['id', 't', 'ev', 'env', 'pid', 'stream']) delete rest[key];
  return h('tr', {'data-id': e.id, 'data-stream': e.stream}, h('td', {class: 'when'}, when(streamTime(e.id))),
    h('td', {class: 'when'}, e.stream === 'audit' ? 'audit' : 'log'), h('td', {class: 'when'}, e.ev),
    h('td', {class: 'line'}, JSON.stringify(rest)));
}

async function logsScreen() {
  const field = (name, label, type, attrs) => h('label', {}, label, h('input', {name, type, ...(attrs || {})}));
  const types = h('datalist', {id: 'event-types'}, EVENTS.map((e) => h('option', {value: e})));
  const tail = h('input', {type: 'checkbox', name: 'tail', id: 'tail'});
  // `audit`: admin actions and security events; `log`: request errors (sampled) and the processes' events
  const streams = h('label', {}, 'Stream', h('select', {name: 'stream'},
    h('option', {value: ''}, 'both'), h('option', {value: 'audit'}, 'audit (admin, security)'),
    h('option', {value: 'log'}, 'log (requests, processes)')));
  const filters = h('form', {id: 'log-filters', class: 'toolbar'},
    streams, field('type', 'Event type', 'text', {list: 'event-types', autocomplete: 'off'}), types,
    field('q', 'Text', 'search', {maxlength: 200, autocomplete: 'off'}),
    field('since', 'From', 'datetime-local', {step: 1}), field('until', 'Until', 'datetime-local', {step: 1}),
    h('button', {type: 'submit'}, 'Search'),
    h('label', {class: 'check'}, tail, ' Live tail (new events on top)'));
  const body = h('tbody');
  const older = h('button', {type: 'button', id: 'older', hidden: true}, 'Older');
  const status = h('p', {class: 'muted', id: 'logs-status'});
  const seen = new Set();
  let params = new URLSearchParams();
  let next = null;
  let newest = null;
  const add = (events, top) => {
    for (const e of events) {
      const key = `${e.stream}:${e.id}`;  // the two streams can hold the same id
      if (seen.has(key)) continue;
      seen.add(key);
      if (top) body.prepend(eventRow(e)); else body.append(eventRow(e));
    }
    status.textContent = `${body.children.length} event${body.children.length === 1 ? '' : 's'}.`;
  };
  const page = async (before) => {
    const query = new URLSearchParams(params);
    if (before) query.set('before', before);
    const reply = await api('GET', `/admin/logs?${query}`);
    add(reply.events, false);
    next = reply.next;
    older.hidden = !next;
    return reply;
  };
  const poll = async () => {
    ui.timer = null;
    if (!tail.checked || !document.body.contains(tail)) return;
    const query = new URLSearchParams();
    for (const key of ['stream', 'type', 'q']) if (params.has(key)) query.set(key, params.get(key));
    query.set('after', newest);
    try {
      const reply = await api('GET', `/admin/logs?${query}`);
      add(reply.events, true);
      newest = reply.next;
    } catch (e) { flash(e.message, 'error'); }
    if (tail.checked && document.body.contains(tail)) ui.timer = setTimeout(poll, 2000);
  };
  const search = async () => {
    const values = Object.fromEntries(new FormData(filters).entries());
    params = new URLSearchParams();
    if (values.stream) params.set('stream', values.stream);
    if (values.type.trim()) params.set('type', values.type.trim());
    if (values.q.trim()) params.set('q', values.q.trim());
    for (const key of ['since', 'until']) if (values[key]) params.set(key, String(new Date(values[key]).getTime()));
    body.replaceChildren();
    seen.clear();
    const started = Date.now();
    const reply = await page(null);
    // the tail goes on from the newest event shown, or from the moment of this search
    newest = reply.events.length ? reply.events[0].id : `${started - 1000}-0`;
  };
  filters.addEventListener('submit', async (e) => {
    e.preventDefault();
    flash('');
    try { await search(); } catch (error) { flash(error.message, 'error'); }
  });
  older.addEventListener('click', async () => {
    try { await page(next); } catch (error) { flash(error.message, 'error'); }
  });
  tail.addEventListener('change', () => {
    clearTimeout(ui.timer);
    ui.timer = null;
    if (tail.checked) poll();
  });
  show(h('h2', {}, 'Logs'), filters, status, scroller(h('table', {id: 'events', class: 'events'},
    h('thead', {}, h('tr', {}, ['When', 'Stream', 'Event', 'Details'].map((x) => h('th', {}, x)))), body)), older);
  await search();
}

// -- charts -------------------------------------------------------------------------------

const COLORS = ['#2f5bd3', '#b42318', '#067647', '#b54708', '#6941c6', '#0e7090', '#c11574', '#475467'];

// [[t, v], ...] per name → uPlot's columns: the times of any series, a value or null each.
function columns(series, names) {
  const times = [...new Set(names.flatMap((n) => (series[n] || []).map(([t]) => t)))].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  return [times, ...names.map((n) => {
    const column = new Array(times.length).fill(null);
    for (const [t, v] of series[n] || []) column[at.get(t)] = v;
    return column;
  })];
}

// An axis's tick labels: as many decimals as its step has (a step of 0.5 shows one), more if
// two ticks would still read the same ("24% / 24% / 24%"), so no two labels are alike.
function tickLabels(ticks, format) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
  let digits = Math.min(6, (String(Number(step.toPrecision(6))).split('.')[1] || '').length);
  let shown = ticks.map((v) => format(v, digits));
  while (new Set(shown).size < shown.length && digits < 6) {
    digits += 1;
    shown = ticks.map((v) => format(v, digits));
  }
  return shown;
}

// A percent axis: its range from the data (whole percents around it, within 0-100) and steps of
// at least 1 %, so a line that barely moves (the disk at 24.1 % all hour) gets distinct,
// whole-percent ticks instead of noise magnified.
const PERCENT_AXIS = {
  range: (u, low, high) => (low == null ? [0, 100]
    : [Math.max(0, Math.floor(low) - 1), Math.min(100, Math.max(Math.ceil(high) + 1, Math.floor(low) + 2))]),
  incrs: [1, 2, 5, 10, 20, 25, 50],
};

const percent = (v, digits) => `${v.toFixed(digits != null ? digits : v < 10 ? 1 : 0)}%`;
const ms = (v, digits) => `${digits != null ? v.toFixed(digits) : v < 10 ? v.toFixed(1) : Math.round(v)} ms`;

// `axis`: the y scale's range and the axis's steps, if not uPlot's from the data
function chart(id, title, series, names, labels, format, range, axis) {
  const figure = h('figure', {class: 'chart', id: `chart-${id}`}, h('figcaption', {}, title));
  const data = columns(series, names);
  const values = data.slice(1).flat().filter((v) => v != null);
  figure.dataset.points = String(values.length);
  figure.dataset.max = String(values.length ? Math.max(...values) : 0);
  return {figure, draw: () => {
    if (!values.length) {
      figure.append(h('p', {class: 'muted empty'}, 'No data in this range yet.'));
      return;
    }
    const now = Date.now() / 1000;
    const fmt = format || ((v, digits) => (digits != null ? v.toFixed(digits)
      : Number.isInteger(v) ? String(v) : v.toFixed(1)));
    ui.charts.push(new uPlot({
      width: Math.max(figure.clientWidth - 16, 200), height: 180,
      scales: {x: {time: true, range: () => [now - range, now]}, ...(axis ? {y: {range: axis.range}} : {})},
      axes: [{}, {size: 64, values: (u, ticks) => tickLabels(ticks, fmt), ...(axis ? {incrs: axis.incrs} : {})}],
      series: [{}, ...names.map((n, i) => ({label: labels[i], stroke: COLORS[i % COLORS.length], width: 1.5,
        value: (u, v) => (v == null ? '—' : fmt(v))}))],
    }, data, figure));
  }};
}

async function chartsScreen(range, route) {
  range = range || 'hour';
  const epoch = ui.epoch;
  const [stats, beat] = await Promise.all([api('GET', `/admin/stats?range=${range}`),
    api('GET', `/admin/beat?range=${range}`)]);
  if (epoch !== ui.epoch) return;
  const seconds = range === 'day' ? 86400 : 3600;
  const nodes = [...new Set(Object.keys(beat).map((k) => k.split('|').slice(1).join('|')))].sort();
  const perNode = (what) => nodes.map((n) => `${what}|${n}`);
  const routes = Object.keys(stats).filter((k) => k.startsWith('latency_p99|')).map((k) => k.slice(12))
    // the route with the most points first; `-` (no route matched: 404s) last
    .sort((a, b) => a.endsWith(' -') - b.endsWith(' -')
      || stats[`latency_p99|${b}`].length - stats[`latency_p99|${a}`].length || a.localeCompare(b));
  route = routes.includes(route) ? route : routes[0];
  const made = [
    chart('requests', 'Requests', stats, ['requests'], ['requests'], null, seconds),
    chart('errors', 'Errors', stats, ['errors_4xx', 'errors_5xx'], ['4xx', '5xx'], null, seconds),
    chart('latency', 'Latency, all routes', stats, ['latency_p50', 'latency_p99'], ['p50', 'p99'], ms, seconds),
    chart('route-latency', `Latency of ${route || 'a route'}`, stats,
      route ? [`latency_p50|${route}`, `latency_p99|${route}`] : [], ['p50', 'p99'], ms, seconds),
    chart('logins', 'Logins', stats, ['logins', 'login_failures', 'signups'], ['logins', 'refused', 'signups'],
      null, seconds),
    chart('cpu', 'CPU', beat, perNode('cpu'), nodes, percent, seconds, PERCENT_AXIS),
    chart('memory', 'Memory', beat, perNode('memory'), nodes, percent, seconds, PERCENT_AXIS),
    chart('disk', 'Disk', beat, perNode('disk'), nodes, percent, seconds, PERCENT_AXIS),
    chart('redis-memory', 'Redis memory', beat, perNode('redis_used_memory'), nodes, bytes, seconds),
  ];
  const pick = h('select', {name: 'range', id: 'range'}, [['hour', 'Last hour'], ['day', 'Last day']].map(([v, l]) =>
    h('option', {value: v, selected: v === range}, l)));
  const routePick = h('select', {name: 'route', id: 'route'}, routes.map((r) => h('option', {value: r, selected: r === route}, r)));
  const redraw = () => chartsScreen(pick.value, routePick.value).catch((e) => flash(e.message, 'error'));
  pick.addEventListener('change', () => openScreen(() => chartsScreen(pick.value, routePick.value)));
  routePick.addEventListener('change', () => openScreen(() => chartsScreen(pick.value, routePick.value)));
  stopScreen();
  show(h('h2', {}, 'Charts'),
    h('div', {class: 'toolbar'}, h('label', {}, 'Range', pick), h('label', {}, 'Route', routePick),
      h('button', {type: 'button', id: 'refresh-charts', onclick: redraw}, 'Refresh')),
    h('p', {class: 'muted'}, 'Requests, errors and logins per minute (per 5 minutes over a day); beat per node.'),
    h('div', {class: 'charts', id: 'charts'}, made.map((c) => c.figure)));
  made.forEach((c) => c.draw());
  ui.timer = setTimeout(redraw, 30000);
}

// -- backups ------------------------------------------------------------------------------

async function backupsScreen(waiting) {
  const epoch = ui.epoch;
  const {backups, tasks} = await api('GET', '/admin/backups');
  if (epoch !== ui.epoch) return;
  const now = h('button', {type: 'button', id: 'backup-now', onclick: async () => {
    try {
      await api('POST', '/admin/backups', {});
      flash('Backup started: it is listed below once done.', 'ok');
      await backupsScreen({since: Date.now(), count: backups.length});
    } catch (e) { flash(e.message, 'error'); }
  }}, 'Back up now');
  const rows = backups.map((b) => h('tr', {'data-name': b.name}, h('td', {}, b.name), h('td', {}, when(b.created * 1000)),
    h('td', {}, bytes(b.size)), h('td', {}, String(b.keys)), h('td', {}, String(b.files)),
    h('td', {class: 'line', title: b.sha256}, (b.sha256 || '').slice(0, 16))));
  const taskRows = Object.entries(tasks).sort(([a], [b]) => a.localeCompare(b)).map(([name, t]) => h('tr',
    {'data-task': name}, h('td', {}, name), h('td', {}, when(t.at)),
    h('td', {}, t.at == null ? '—' : t.ok ? h('span', {class: 'yes'}, 'ok') : h('span', {class: 'bad'}, 'failed')),
    h('td', {}, t.outcome || t.error || ''), h('td', {}, t.took != null ? `${t.took} ms` : ''), h('td', {}, t.node || ''),
    h('td', {}, t.running ? 'running' : t.requested ? 'asked for' : '')));
  stopScreen();
  show(h('h2', {}, 'Backups'), h('div', {class: 'actions'}, now),
    rows.length ? table('backups', ['Name', 'Made', 'Size', 'Keys', 'Files', 'SHA-256'], rows)
      : h('p', {class: 'muted', id: 'backups'}, 'No backup yet.'),
    h('h3', {}, 'Tasks: the last result of each'),
    taskRows.length ? table('tasks', ['Task', 'Ended', 'Result', 'Outcome', 'Took', 'Node', 'Now'], taskRows)
      : h('p', {class: 'muted', id: 'tasks'}, 'No task has run yet.'));
  const busy = Object.values(tasks).some((t) => t.running || t.requested);
  const pending = waiting && backups.length <= waiting.count && Date.now() - waiting.since < 120000;
  if (busy || pending) {
    ui.timer = setTimeout(() => backupsScreen(pending ? waiting : null).catch((e) => flash(e.message, 'error')), 1000);
  }
}

// -- navigation ---------------------------------------------------------------------------

// Each screen has its address in the fragment: #users, #users/<username> (a user's detail),
// #invites, #logs, #charts, #backups. The nav and the user list are links that change it, and
// every change draws the screen it names: Back goes to the previous screen, a reload stays.
const SCREENS = {users: usersScreen, invites: invitesScreen, logs: logsScreen, charts: () => chartsScreen('hour'),
  backups: () => backupsScreen(null)};

// The screen the address names, and its argument (a username); an unknown one is Users.
function where() {
  const hash = location.hash.slice(1);
  const slash = hash.indexOf('/');
  const name = slash < 0 ? hash : hash.slice(0, slash);
  if (!Object.hasOwn(SCREENS, name)) return ['users', ''];
  let arg = '';
  try { arg = slash < 0 ? '' : decodeURIComponent(hash.slice(slash + 1)); } catch (e) { /* a mangled address */ }
  return [name, name === 'users' ? arg : ''];
}

function stopScreen() {
  ui.epoch += 1;
  clearTimeout(ui.timer);
  ui.timer = null;
  for (const c of ui.charts.splice(0)) c.destroy();
}

// Draw a screen; an error is shown in words, and a session that ended (or lost its admin
// rights) takes the page back to the login form (or "not an admin").
async function openScreen(draw) {
  stopScreen();
  try {
    await draw();
  } catch (e) {
    flash(e.message, 'error');
    if (!state.me) loginScreen();
    else if (e.code === 'admin') { state.me = {...state.me, admin: false}; notAdminScreen(); }
  }
}

// Draws the screen of the current address.
function draw(keepFlash) {
  if (!keepFlash) flash('');
  const [name, user] = where();
  document.querySelectorAll('[data-go]').forEach((b) => {
    if (b.dataset.go === name) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  });
  return openScreen(user ? () => userScreen(user) : SCREENS[name]);
}

// Goes to an address (`users`, `invites`, ...): a new entry in the history, or a redraw of the
// screen shown if it is that one already.
function go(address, keepFlash) {
  if (location.hash === `#${address}`) return draw(keepFlash);
  ui.keepFlash = Boolean(keepFlash);
  location.hash = address;  // the hashchange draws it
  return undefined;
}

window.addEventListener('hashchange', () => {
  const keep = ui.keepFlash;
  ui.keepFlash = false;
  if (state.me && state.me.admin) draw(keep);  // else: the login form stays, and draws it after
});

async function start() {
  document.getElementById('logout').addEventListener('click', logout);
  // a nav link to the screen shown: no change of address, so it redraws the screen itself
  document.querySelectorAll('[data-go]').forEach((link) => link.addEventListener('click', (e) => {
    if (location.hash === link.getAttribute('href')) { e.preventDefault(); draw(); }
  }));
  try {
    // 200 logged in or not: the page's own question is not an error in the logs (GET /auth/csrf
    // answers a visitor without a cookie 403 nocookie)
    const reply = await api('GET', '/auth/session');
    state.csrf = reply.csrf;
    state.me = reply.me;
  } catch (e) {
    state.me = null;
  }
  enter();
}

start();
