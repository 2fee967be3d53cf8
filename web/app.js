// AgentGate reviewer console. Plain JS, no dependencies, served by the gate itself.
//
// Every string that comes from a request (subjects, paths, params, reasons, notes) is written
// by an agent that may be hostile: it is put into the page with textContent only, never as
// HTML. The Content-Security-Policy refuses inline script as a second line of defence.
'use strict';

(function () {
  const S = {
    csrf: null,
    reviewer: null,
    ws: null,
    boot: null,
    lastSeq: null,
    skew: 0,
    attempts: 0,
    reconnectTimer: null,
    stopped: true,
    pending: new Map(), // id -> challenge
    resolved: new Map(), // id -> challenge (settled: never actionable again)
    decisions: [], // audit records, newest first
    decisionSeqs: new Set(),
    auditHead: 0, // the newest audit record known
    outcomes: new Map(), // decision seq -> outcome record
    policy: null,
  };
  const MAX_DECISIONS = 500;
  const MAX_SETTLED = 50;
  const MAX_PARAM_ROWS = 40;

  // ---- DOM helpers: text only ------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  // el('div', {class: 'x', title: 't'}, 'text', child, ...): strings become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      parent.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function toast(text, kind) {
    const t = $('toast');
    t.textContent = text;
    t.className = 'toast ' + (kind || '');
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
  }

  // ---- formatting ------------------------------------------------------------------------

  const serverNow = () => Date.now() + S.skew;

  function fmtTime(ms) {
    if (typeof ms !== 'number') return '';
    const d = new Date(ms);
    const today = new Date();
    const time = d.toLocaleTimeString([], { hour12: false });
    if (d.toDateString() === today.toDateString()) return time;
    return d.toLocaleDateString() + ' ' + time;
  }

  function fmtIso(ms) {
    return typeof ms === 'number' ? new Date(ms).toISOString() : '';
  }

  function fmtLeft(ms) {
    if (ms <= 0) return 'expired';
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  }

  function fmtBytes(n) {
    if (typeof n !== 'number') return '';
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1024 / 1024).toFixed(1) + ' MiB';
  }

  function str(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  function list(v) {
    if (Array.isArray(v)) return v.map(str);
    if (v === null || v === undefined || v === '') return [];
    return [str(v)];
  }

  // `/a/b/default.policy:3:1` -> `default.policy:3:1`
  function baseName(path) {
    const i = path.lastIndexOf('/');
    return i >= 0 ? path.slice(i + 1) : path;
  }

  function shortId(h) {
    const s = str(h);
    return /^[0-9a-f]{40,64}$/i.test(s) ? s.slice(0, 12) : s;
  }

  function decisionBadge(d) {
    const v = str(d);
    return el('span', { class: 'dec dec-' + v.replace(/[^a-z_]/g, '') }, v);
  }

  function actionNames(actions) {
    return (actions || []).map((a) => str(a.name)).join(', ');
  }

  function target(method, host, path) {
    return [str(method), str(host) + str(path)].filter(Boolean).join(' ');
  }

  // ---- API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.reason) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, path, body) {
    const headers = { accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') {
      headers['content-type'] = 'application/json';
      if (S.csrf) headers['x-csrf-token'] = S.csrf;
      init.body = JSON.stringify(body || {});
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { reason: 'the gate cannot be reached' });
    }
    const ct = resp.headers.get('content-type') || '';
    let data = null;
    if (ct.startsWith('application/json')) {
      data = await resp.json().catch(() => null);
    } else {
      data = await resp.text();
    }
    if (resp.status === 401 && path !== '/api/login') {
      sessionEnded('Your session has ended. Log in again.');
    }
    if (!resp.ok) throw new ApiError(resp.status, typeof data === 'object' ? data : null);
    return data;
  }

  // ---- login -----------------------------------------------------------------------------

  function showLogin(message) {
    $('app-view').hidden = true;
    $('conn').hidden = true;
    $('tabs').hidden = true;
    $('logout').hidden = true;
    $('who').textContent = '';
    $('login-view').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function sessionEnded(message) {
    if (S.stopped) return;
    stopFeed();
    S.csrf = null;
    showLogin(message);
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const input = $('token');
    const token = input.value.trim();
    $('login-error').textContent = '';
    $('login-submit').disabled = true;
    try {
      const r = await api('POST', '/api/login', { token });
      input.value = '';
      enter(r);
    } catch (e) {
      $('login-error').textContent = e.status === 401
        ? 'That is not a reviewer token.'
        : 'Login failed: ' + e.message;
    } finally {
      $('login-submit').disabled = false;
    }
  }

  async function onLogout() {
    try {
      await api('POST', '/api/logout', {});
    } catch (e) {
      // The session is gone either way on this page.
    }
    stopFeed();
    S.csrf = null;
    showLogin('Logged out.');
  }

  function enter(session) {
    S.csrf = session.csrf;
    S.reviewer = session.reviewer;
    $('who').textContent = session.reviewer;
    $('login-view').hidden = true;
    $('conn').hidden = false;
    $('app-view').hidden = false;
    $('tabs').hidden = false;
    $('logout').hidden = false;
    S.stopped = false;
    S.lastSeq = null;
    S.boot = null;
    connect();
  }

  // ---- the live feed ---------------------------------------------------------------------

  function setConn(state, detail) {
    const c = $('conn');
    c.className = 'conn conn-' + state;
    c.textContent = detail ? `${state} · ${detail}` : state;
  }

  function connect() {
    if (S.stopped) return;
    clearTimeout(S.reconnectTimer);
    let url = `ws://${location.host}/api/events`;
    if (S.lastSeq !== null && S.boot) {
      url += `?after=${encodeURIComponent(S.lastSeq)}&boot=${encodeURIComponent(S.boot)}`;
    }
    setConn(S.attempts === 0 ? 'connecting' : 'reconnecting', S.attempts ? `try ${S.attempts + 1}` : '');
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    ws.onmessage = (m) => {
      if (ws !== S.ws) return;
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch (e) {
        return;
      }
      try {
        onMessage(msg);
      } catch (e) {
        console.error('agentgate: event not shown', e);
      }
    };
    ws.onclose = (ev) => {
      if (ws !== S.ws) return;
      S.ws = null;
      if (S.stopped) return;
      if (ev.code === 1008) {
        sessionEnded('Your session has ended. Log in again.');
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    S.attempts += 1;
    const delay = Math.min(15000, 500 * 2 ** Math.min(S.attempts, 5));
    const offline = !navigator.onLine || S.attempts >= 4;
    setConn(offline ? 'offline' : 'reconnecting', `retry in ${Math.round(delay / 1000)} s`);
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = setTimeout(async () => {
      // A refused upgrade looks like any closed socket: ask whether the session still holds.
      if (S.attempts >= 2) {
        try {
          await api('GET', '/api/session');
        } catch (e) {
          if (e.status === 401) return;
        }
      }
      connect();
    }, delay);
  }

  function stopFeed() {
    S.stopped = true;
    clearTimeout(S.reconnectTimer);
    if (S.ws) {
      const ws = S.ws;
      S.ws = null;
      ws.close();
    }
    setConn('offline');
  }

  function onMessage(msg) {
    if (msg.type === 'hello') {
      S.skew = typeof msg.now_ms === 'number' ? msg.now_ms - Date.now() : 0;
      S.attempts = 0;
      setConn('connected');
      if (S.boot !== msg.boot || S.lastSeq === null) {
        // A new gate process (or the first connection): start from its head and reload.
        S.boot = msg.boot;
        S.lastSeq = msg.head;
        reloadAll(msg.audit_head);
      }
      return;
    }
    if (typeof msg.seq !== 'number') return;
    if (S.lastSeq !== null && msg.seq <= S.lastSeq) return; // already applied
    S.lastSeq = msg.seq;
    switch (msg.type) {
      case 'challenge_created':
        onChallenge(msg.challenge);
        break;
      case 'challenge_resolved':
        onChallenge(msg.challenge);
        break;
      case 'decision':
        addDecision(msg.record, true);
        break;
      case 'policy':
        renderPolicy(msg.policy);
        break;
      case 'resync':
        reloadAll(null);
        break;
      default:
        break;
    }
  }

  // ---- lists: loaded through the REST API, kept current by events ------------------------

  // After a (re)connection to a new gate process, or a resync: everything from the REST API.
  async function reloadAll(auditHead) {
    if (typeof auditHead === 'number') S.auditHead = auditHead;
    await Promise.allSettled([loadChallenges(), loadPolicy(), loadRecentDecisions()]);
  }

  async function loadChallenges() {
    const [pending, recent] = await Promise.all([
      api('GET', '/api/challenges?state=pending'),
      api('GET', `/api/challenges?limit=${MAX_SETTLED * 2}`),
    ]);
    for (const c of recent.challenges || []) {
      if (c.state !== 'pending') settle(c, false);
    }
    const fresh = new Map();
    for (const c of pending.challenges || []) {
      if (!S.resolved.has(c.id)) fresh.set(c.id, c);
    }
    // Challenges created by events after the list was read stay.
    for (const [id, c] of S.pending) {
      if (!fresh.has(id) && !S.resolved.has(id) && c._fromEvent) fresh.set(id, c);
    }
    S.pending = fresh;
    renderQueue();
    renderSettled();
  }

  // The newest decisions: from a little before the newest record known, onwards.
  async function loadRecentDecisions() {
    const after = Math.max(0, S.auditHead - 400);
    const r = await api('GET', `/api/audit?after=${after}&limit=1000`);
    for (const rec of r.records || []) {
      if (rec.kind === 'outcome') S.outcomes.set(rec.decision_seq, rec);
      else if (rec.kind === 'decision') addDecision(rec, false);
    }
    renderDecisions();
  }

  function onChallenge(c) {
    if (!c || typeof c.id !== 'string') return;
    if (c.state === 'pending') {
      if (S.resolved.has(c.id)) return;
      c._fromEvent = true;
      S.pending.set(c.id, c);
      renderQueue();
      return;
    }
    settle(c, true);
  }

  // A challenge that left pending: never actionable again on this page.
  function settle(c, announce) {
    const had = S.pending.has(c.id);
    S.pending.delete(c.id);
    S.resolved.set(c.id, c);
    if (S.resolved.size > MAX_SETTLED * 4) {
      const oldest = S.resolved.keys().next().value;
      S.resolved.delete(oldest);
    }
    const card = document.querySelector(`li.card[data-id="${CSS.escape(c.id)}"]`);
    if (card) disableCard(card, c);
    if (had) renderQueue();
    renderSettled();
    if (announce && had && c.reviewer !== S.reviewer) {
      toast(`${actionNames(c.actions)} from ${c.agent}: ${c.state}${c.reviewer ? ' by ' + c.reviewer : ''}`);
    }
  }

  function addDecision(rec, live) {
    if (!rec || typeof rec.seq !== 'number' || S.decisionSeqs.has(rec.seq)) return;
    S.decisionSeqs.add(rec.seq);
    S.auditHead = Math.max(S.auditHead, rec.seq);
    S.decisions.push(rec);
    S.decisions.sort((a, b) => b.seq - a.seq);
    while (S.decisions.length > MAX_DECISIONS) {
      S.decisionSeqs.delete(S.decisions.pop().seq);
    }
    if (live) renderDecisions();
  }

  // ---- the queue -------------------------------------------------------------------------

  function renderQueue() {
    const q = $('queue');
    const items = [...S.pending.values()].sort((a, b) => a.expires_ms - b.expires_ms);
    const existing = new Map();
    for (const li of q.querySelectorAll('li.card')) existing.set(li.dataset.id, li);
    for (const [id, li] of existing) {
      if (!S.pending.has(id)) li.remove();
    }
    for (const c of items) {
      let li = existing.get(c.id);
      if (!li) li = card(c);
      q.appendChild(li); // keeps the order by expiry
    }
    const n = S.pending.size;
    $('pending-count').textContent = n;
    $('tab-pending').textContent = n;
    $('tab-pending').classList.toggle('badge-hot', n > 0);
    $('queue-empty').hidden = n > 0;
    document.title = n > 0 ? `(${n}) AgentGate` : 'AgentGate';
    tick();
  }

  function card(c) {
    const li = el('li', { class: 'card', 'data-id': c.id });
    const first = (c.actions || [])[0] || {};
    li.appendChild(el('div', { class: 'card-head' },
      el('span', { class: 'agent', title: 'agent' }, str(c.agent)),
      el('span', { class: 'action-name' }, actionNames(c.actions)),
      c.hold ? null : el('span', { class: 'tag', title: 'The agent was answered 428 and will retry once approved' }, 'not held'),
      el('span', { class: 'spacer' }),
      el('span', { class: 'countdown', 'data-expires': c.expires_ms, title: 'expires ' + fmtIso(c.expires_ms) }, ''),
    ));
    li.appendChild(el('div', { class: 'bar' }, el('div', { class: 'bar-fill', 'data-created': c.created_ms, 'data-expires': c.expires_ms })));
    const why = el('ul', { class: 'why' });
    const rules = list(c.rules);
    const reasons = list(c.reasons);
    const n = Math.max(rules.length, reasons.length);
    for (let i = 0; i < n; i++) {
      why.appendChild(el('li', null,
        rules[i] ? el('code', { class: 'rule' }, rules[i]) : null,
        reasons[i] ? el('span', { class: 'reason' }, reasons[i]) : null));
    }
    li.appendChild(why);
    for (const a of c.actions || []) li.appendChild(substance(a));
    if (c.truncated) {
      li.appendChild(el('p', { class: 'warn' }, 'This request is too large for the live feed; reload the page to see its params.'));
    }
    li.appendChild(el('details', { class: 'raw' },
      el('summary', null, 'Everything the gate saw'),
      el('dl', { class: 'facts small' },
        el('dt', null, 'Challenge'), el('dd', null, el('code', null, str(c.id))),
        el('dt', null, 'Created'), el('dd', { title: fmtIso(c.created_ms) }, fmtTime(c.created_ms)),
        el('dt', null, 'Request digest'), el('dd', null, el('code', null, str(c.digest))),
        el('dt', null, 'Target'), el('dd', null, target(first.method, first.host, first.path))),
      el('pre', { class: 'json' }, JSON.stringify(c.actions, null, 2))));
    const note = el('input', { type: 'text', class: 'note', placeholder: 'Note for the audit log and the agent (optional)', maxlength: '2000', spellcheck: 'true' });
    const approve = el('button', { type: 'button', class: 'btn btn-approve', 'data-verb': 'approve' }, 'Approve');
    const deny = el('button', { type: 'button', class: 'btn btn-deny', 'data-verb': 'deny' }, 'Deny');
    const status = el('span', { class: 'card-status', role: 'status' });
    approve.addEventListener('click', () => decide(c.id, 'approve', li));
    deny.addEventListener('click', () => decide(c.id, 'deny', li));
    li.appendChild(el('div', { class: 'decide' }, note, approve, deny, status));
    return li;
  }

  // What the reviewer judges: the substance of one action, by kind.
  function substance(a) {
    const p = a.params || {};
    const box = el('div', { class: 'substance' });
    const name = str(a.name);
    const row = (label, ...value) => el('div', { class: 'kv' }, el('span', { class: 'k' }, label), el('span', { class: 'v' }, ...value));
    const addrs = (v) => {
      const l = list(v);
      return l.length ? l.map((x) => el('span', { class: 'addr' }, x)) : el('span', { class: 'muted' }, 'none');
    };
    box.appendChild(row('Request', el('code', null, target(a.method, a.host, a.path))));
    if (name.startsWith('gmail.') && ('to' in p || 'recipients' in p || 'subject' in p)) {
      box.classList.add('mail');
      if ('from' in p && list(p.from).length) box.appendChild(row('From', addrs(p.from)));
      box.appendChild(row('To', addrs(p.to)));
      if (list(p.cc).length) box.appendChild(row('Cc', addrs(p.cc)));
      if (list(p.bcc).length) box.appendChild(row('Bcc', addrs(p.bcc)));
      if (p.recipients_known === false) {
        box.appendChild(el('p', { class: 'warn' }, 'The recipients are not known: the gate did not see this draft being written.'));
      }
      box.appendChild(row('Subject', el('span', { class: 'subject' }, str(p.subject))));
      const att = Array.isArray(p.attachments) ? p.attachments : [];
      if (att.length) {
        box.appendChild(row('Attachments', att.map((x) => el('span', { class: 'addr' }, typeof x === 'object' && x ? [str(x.filename || x.name), x.mime_type || x.content_type ? ` (${str(x.mime_type || x.content_type)})` : ''].join('') : str(x)))));
      }
      if ('size' in p) box.appendChild(row('Size', fmtBytes(p.size) + (p.body_shape ? ` · ${str(p.body_shape)}` : '')));
      const preview = p.body_preview ?? p.body ?? p.snippet ?? p.text;
      if (preview !== undefined) box.appendChild(row('Body', el('pre', { class: 'preview' }, str(preview).slice(0, 4000))));
    } else if (name === 'git.push') {
      box.classList.add('push');
      box.appendChild(row('Repository', el('code', null, str(p.repo))));
      const refs = Array.isArray(p.refs) ? p.refs : [];
      const t = el('table', { class: 'refs' }, el('thead', null, el('tr', null, el('th', null, 'Ref'), el('th', null, 'Change'), el('th', null, 'Old'), el('th', null, ''), el('th', null, 'New'))));
      const body = el('tbody');
      for (const r of refs) {
        const kind = str(r.kind);
        body.appendChild(el('tr', { class: 'ref-' + kind.replace(/[^a-z]/g, '') },
          el('td', null, el('code', null, str(r.name))),
          el('td', null, el('span', { class: 'tag tag-' + kind.replace(/[^a-z]/g, '') }, kind)),
          el('td', { title: str(r.old) }, el('code', null, shortId(r.old))),
          el('td', null, '→'),
          el('td', { title: str(r.new) }, el('code', null, shortId(r.new)))));
      }
      t.appendChild(body);
      box.appendChild(row('Refs', refs.length ? t : el('span', { class: 'muted' }, 'none')));
      if (list(p.push_options).length) box.appendChild(row('Push options', list(p.push_options).join(', ')));
    } else if (name === 'net.connect') {
      box.appendChild(row('Tunnel to', el('code', null, `${str(a.host)}:${str(p.port)}`)));
    } else {
      // REST, GraphQL and the rest: every param by its name; strings as written.
      const keys = Object.keys(p).sort();
      if (!keys.length) box.appendChild(row('Params', el('span', { class: 'muted' }, 'none')));
      for (const k of keys.slice(0, MAX_PARAM_ROWS)) {
        box.appendChild(el('div', { class: 'kv' }, el('code', { class: 'k' }, k), el('span', { class: 'v' }, paramValue(p[k]))));
      }
      if (keys.length > MAX_PARAM_ROWS) {
        box.appendChild(el('p', { class: 'muted' }, `${keys.length - MAX_PARAM_ROWS} more under “Everything the gate saw”.`));
      }
    }
    return box;
  }

  function paramValue(v) {
    if (typeof v === 'string') return el('span', { class: 'text-value' }, v);
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) {
      return v.length ? v.map((x) => el('span', { class: 'addr' }, x)) : el('span', { class: 'muted' }, '[]');
    }
    if (v !== null && typeof v === 'object') return el('pre', { class: 'json' }, JSON.stringify(v, null, 2));
    return el('code', null, String(v));
  }

  function disableCard(li, c) {
    li.classList.add('decided');
    for (const b of li.querySelectorAll('button, input')) b.disabled = true;
    const status = li.querySelector('.card-status');
    if (status && c) status.textContent = `${c.state}${c.reviewer ? ' by ' + c.reviewer : ''}`;
  }

  async function decide(id, verb, li) {
    if (!S.pending.has(id)) return; // decided meanwhile
    const note = li.querySelector('.note').value.trim();
    const buttons = li.querySelectorAll('button');
    for (const b of buttons) b.disabled = true;
    const status = li.querySelector('.card-status');
    status.textContent = verb === 'approve' ? 'approving…' : 'denying…';
    try {
      const r = await api('POST', `/api/challenges/${encodeURIComponent(id)}/${verb}`, note ? { note } : {});
      settle(r.challenge, false);
    } catch (e) {
      if (e.status === 409) {
        const st = str(e.body.state) || 'decided';
        toast(`Already ${st}: nothing was changed.`);
        const c = S.pending.get(id) || { id };
        settle(Object.assign({}, c, { state: st }), false);
      } else if (e.status === 404) {
        toast('The gate does not know this challenge any more.');
        settle(Object.assign({}, S.pending.get(id) || { id }, { state: 'unknown' }), false);
      } else if (e.status === 401) {
        // sessionEnded has taken over.
      } else {
        status.textContent = '';
        toast(`Could not ${verb}: ${e.message}`, 'error');
        if (S.pending.has(id)) for (const b of buttons) b.disabled = false;
      }
    }
  }

  // Countdowns and window bars, once a second.
  function tick() {
    const now = serverNow();
    for (const c of document.querySelectorAll('#queue .countdown')) {
      const left = Number(c.dataset.expires) - now;
      c.textContent = left > 0 ? 'expires in ' + fmtLeft(left) : 'expired';
      c.classList.toggle('soon', left < 60000);
      if (left <= 0) {
        const li = c.closest('li.card');
        if (li && !li.classList.contains('decided')) {
          disableCard(li, null);
          li.querySelector('.card-status').textContent = 'window closed';
        }
      }
    }
    for (const b of document.querySelectorAll('#queue .bar-fill')) {
      const created = Number(b.dataset.created);
      const expires = Number(b.dataset.expires);
      const frac = Math.max(0, Math.min(1, (expires - now) / Math.max(1, expires - created)));
      b.style.width = (frac * 100).toFixed(1) + '%';
    }
  }

  function renderSettled() {
    const body = $('settled-body');
    clear(body);
    const items = [...S.resolved.values()]
      .filter((c) => c.agent !== undefined)
      .sort((a, b) => (b.decided_ms || b.created_ms || 0) - (a.decided_ms || a.created_ms || 0))
      .slice(0, MAX_SETTLED);
    for (const c of items) {
      const when = c.redeemed_ms || c.decided_ms || c.created_ms;
      body.appendChild(el('tr', null,
        el('td', { class: 'time', title: fmtIso(when) }, fmtTime(when)),
        el('td', { class: 'nowrap' }, str(c.agent)),
        el('td', null, actionNames(c.actions)),
        el('td', null, decisionBadge(c.state)),
        el('td', null, str(c.reviewer)),
        el('td', { class: 'note-cell' }, str(c.note))));
    }
    if (!items.length) body.appendChild(el('tr', null, el('td', { colspan: '6', class: 'muted' }, 'None yet.')));
  }

  // ---- decisions ---------------------------------------------------------------------------

  function recordCells(r) {
    const actions = r.actions || [];
    const rules = list(r.rules);
    const reasons = list(r.reasons);
    return {
      time: el('td', { class: 'time', title: fmtIso(r.time_ms) }, fmtTime(r.time_ms)),
      agent: el('td', { class: 'nowrap' }, str(r.agent)),
      decision: el('td', null, decisionBadge(r.decision)),
      action: el('td', null, el('code', null, actions.map((a) => str(a.name)).join(', '))),
      target: el('td', { class: 'target' }, target(r.method, r.host, r.path)),
      why: el('td', null, rules.map((x) => el('code', { class: 'rule' }, x)), reasons.length ? el('div', { class: 'reason' }, reasons.join(' · ')) : null),
    };
  }

  function feedText(r) {
    return [r.agent, r.decision, r.host, r.path, r.method, ...(r.rules || []), ...(r.reasons || []),
      ...(r.actions || []).map((a) => a.name), r.reviewer].map(str).join(' ').toLowerCase();
  }

  function renderDecisions() {
    const mini = $('mini-feed');
    clear(mini);
    for (const r of S.decisions.slice(0, 60)) {
      mini.appendChild(el('li', null,
        el('span', { class: 'mini-time', title: fmtIso(r.time_ms) }, fmtTime(r.time_ms)),
        decisionBadge(r.decision),
        el('span', { class: 'mini-agent' }, str(r.agent)),
        el('code', { class: 'mini-action' }, (r.actions || []).map((a) => str(a.name)).join(', ')),
        el('span', { class: 'mini-target' }, str(r.host) + str(r.path))));
    }
    if (!S.decisions.length) mini.appendChild(el('li', { class: 'muted' }, 'No decisions yet.'));
    const body = $('feed-body');
    clear(body);
    const q = $('feed-filter').value.trim().toLowerCase();
    for (const r of S.decisions) {
      if (q && !feedText(r).includes(q)) continue;
      const c = recordCells(r);
      body.appendChild(el('tr', null, el('td', { class: 'num' }, r.seq), c.time, c.agent, c.decision, c.action, c.target, c.why,
        el('td', null, str(r.reviewer), r.note ? el('div', { class: 'note-cell' }, str(r.note)) : null)));
    }
  }

  // ---- audit log -------------------------------------------------------------------------

  function auditQuery(withLast) {
    const f = new FormData($('audit-form'));
    const q = new URLSearchParams();
    for (const k of ['agent', 'action', 'decision']) {
      const v = String(f.get(k) || '').trim();
      if (v) q.set(k, v);
    }
    for (const k of ['since', 'until']) {
      const v = String(f.get(k) || '');
      if (v) {
        const d = new Date(v);
        if (!isNaN(d)) q.set(k, d.toISOString());
      }
    }
    if (withLast) {
      const n = parseInt(String(f.get('last') || '200'), 10);
      q.set('last', String(Number.isFinite(n) && n > 0 ? Math.min(n, 10000) : 200));
    }
    return q.toString();
  }

  function updateDownload() {
    const q = auditQuery(false);
    $('audit-download').setAttribute('href', '/api/audit/export' + (q ? '?' + q : ''));
  }

  async function searchAudit(ev) {
    if (ev) ev.preventDefault();
    updateDownload();
    const status = $('audit-status');
    status.textContent = 'Searching…';
    status.className = 'status-line';
    let text;
    try {
      text = await api('GET', '/api/audit/export?' + auditQuery(true));
    } catch (e) {
      status.textContent = 'Search failed: ' + e.message;
      status.className = 'status-line error';
      return;
    }
    const records = [];
    const outcomes = new Map();
    for (const line of String(text).split('\n')) {
      if (!line) continue;
      try {
        const r = JSON.parse(line);
        if (r.kind === 'outcome') outcomes.set(r.decision_seq, r);
        else if (r.kind === 'decision') records.push(r);
      } catch (e) {
        // A line that does not parse is skipped; `agentgate audit verify` checks the log.
      }
    }
    const needle = String(new FormData($('audit-form')).get('q') || '').trim().toLowerCase();
    const shown = needle ? records.filter((r) => JSON.stringify(r).toLowerCase().includes(needle)) : records;
    shown.reverse();
    const body = $('audit-body');
    clear(body);
    for (const r of shown) {
      const c = recordCells(r);
      const o = outcomes.get(r.seq);
      const upstream = o ? (o.status ? String(o.status) : (o.error ? 'error' : '')) : '';
      const detail = el('tr', { class: 'detail', hidden: true }, el('td', { colspan: '9' }, el('pre', { class: 'json' }, JSON.stringify(o ? { decision: r, outcome: o } : r, null, 2))));
      const tr = el('tr', { class: 'clickable', title: 'Show the whole record' },
        el('td', { class: 'num' }, r.seq), c.time, c.agent, c.decision, c.action, c.target, c.why,
        el('td', null, str(r.reviewer), r.note ? el('div', { class: 'note-cell' }, str(r.note)) : null),
        el('td', { title: o && o.error ? str(o.error) : '' }, upstream));
      tr.addEventListener('click', () => { detail.hidden = !detail.hidden; });
      body.appendChild(tr);
      body.appendChild(detail);
    }
    status.textContent = `${shown.length} decision${shown.length === 1 ? '' : 's'}` +
      (needle ? ` matching “${needle}” of ${records.length}` : '') + ', newest first.';
  }

  async function verifyChain() {
    const status = $('audit-status');
    status.textContent = 'Verifying the hash chain…';
    status.className = 'status-line';
    try {
      const r = await api('GET', '/api/audit/verify');
      if (r.broken) {
        status.textContent = `The chain is BROKEN at record ${r.broken.seq}: ${str(r.broken.why)}`;
        status.className = 'status-line error';
      } else {
        status.textContent = `The chain verifies: ${r.records} records (${r.first ?? '-'} to ${r.last ?? '-'}), head ${str(r.head).slice(0, 16)}…`;
        status.className = 'status-line ok';
      }
    } catch (e) {
      status.textContent = 'Verify failed: ' + e.message;
      status.className = 'status-line error';
    }
  }

  // ---- policy ------------------------------------------------------------------------------

  async function loadPolicy() {
    renderPolicy(await api('GET', '/api/policy'));
  }

  function renderPolicy(p) {
    if (!p || typeof p !== 'object') return;
    S.policy = p;
    const facts = $('policy-facts');
    clear(facts);
    const fact = (k, ...v) => append(facts, [el('dt', null, k), el('dd', null, ...v)]);
    const statusText = { loaded: 'loaded', failed: 'last load failed', never: 'nothing loaded yet' }[p.status] || str(p.status);
    fact('Status', el('span', { class: 'dec dec-' + (p.status === 'loaded' ? 'allow' : 'block') }, statusText));
    fact('In force', p.active
      ? `${p.active.files} file(s), ${p.active.rules} rule(s), ${p.active.tests} test(s); default ${str(p.active.default)}`
      : el('span', { class: 'error' }, 'no policy set: every request is blocked'));
    fact('Directory', el('code', null, str(p.dir)));
    fact('Last change', el('span', { title: fmtIso(p.last_change_ms) }, fmtTime(p.last_change_ms)));
    if (p.dir_error) fact('Directory error', el('span', { class: 'error' }, str(p.dir_error)));
    const errors = list(p.errors);
    $('policy-errors-box').hidden = errors.length === 0;
    $('policy-errors').textContent = errors.join('\n');
    $('tab-policy-warn').hidden = p.status !== 'failed' && !!p.active;
    const files = $('policy-files-body');
    clear(files);
    for (const f of p.files || []) {
      files.appendChild(el('tr', null,
        el('td', null, el('code', null, str(f.name))),
        el('td', null, el('span', { class: 'tag tag-' + str(f.state).replace(/[^a-z_]/g, '') }, str(f.state).replace('_', ' '))),
        el('td', { class: 'num' }, fmtBytes(f.bytes)),
        el('td', { title: fmtIso(f.modified_ms) }, fmtTime(f.modified_ms))));
    }
    const rules = $('policy-rules-body');
    clear(rules);
    for (const r of p.rules || []) {
      rules.appendChild(el('tr', null,
        el('td', null, el('code', null, str(r.id)), r.shadow ? el('span', { class: 'tag' }, 'shadow') : null),
        el('td', null, decisionBadge(r.effect)),
        el('td', null, el('code', null, list(r.on).join(', '))),
        el('td', { title: str(r.location) }, el('code', { class: 'muted' }, baseName(str(r.location)))),
        el('td', null, (r.annotations || []).map((a) => el('span', { class: 'tag' }, `@${str(a.name)}(${str(a.value)})`)))));
    }
  }

  // ---- tabs and start --------------------------------------------------------------------

  function showTab(name) {
    for (const b of document.querySelectorAll('.tab-btn')) b.classList.toggle('active', b.dataset.tab === name);
    for (const t of document.querySelectorAll('section.tab')) t.hidden = t.id !== 'tab-' + name;
    if (name === 'audit' && !$('audit-body').firstChild) searchAudit(null);
    if (name === 'policy') loadPolicy().catch(() => {});
  }

  async function start() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', onLogout);
    for (const b of document.querySelectorAll('.tab-btn')) b.addEventListener('click', () => showTab(b.dataset.tab));
    $('audit-form').addEventListener('submit', searchAudit);
    $('audit-form').addEventListener('input', updateDownload);
    $('audit-verify').addEventListener('click', verifyChain);
    $('policy-refresh').addEventListener('click', () => loadPolicy().catch((e) => toast(e.message, 'error')));
    $('feed-filter').addEventListener('input', renderDecisions);
    window.addEventListener('online', () => { if (!S.ws && !S.stopped) connect(); });
    window.addEventListener('offline', () => setConn('offline', 'no network'));
    setInterval(tick, 1000);
    renderSettled();
    renderDecisions();
    try {
      const s = await api('GET', '/api/session');
      if (s && s.csrf) {
        enter(s);
        return;
      }
    } catch (e) {
      // Not logged in.
    }
    showLogin('');
  }

  document.addEventListener('DOMContentLoaded', start);
})();
