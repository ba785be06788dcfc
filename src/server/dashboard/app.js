// The leasehold dashboard: one page over the server's JSON API (see docs/dashboard.md).
//
// No framework and no build step: the server embeds this file in its binary and serves it
// under a content security policy that allows no inline script. Everything the page shows
// comes from `/v1/*` with the token the user typed, which is kept in sessionStorage (this tab
// only) and sent as `Authorization: Bearer`. The page never decides who may do what: it hides
// the admin buttons from non-admins, and the server refuses them anyway.
//
// Data flow:
// - `/v1/events` (Server-Sent Events, read with fetch() because EventSource cannot send a
//   header) tells the page that something happened; each event goes into the history and
//   triggers a refresh of the leases.
// - `/v1/leases` (active leases) and `/v1/status?path=TOP` (holders and waiters in queue
//   order, one call per top-level folder or file that is held) are read on each refresh, and
//   every few seconds as a safety net: queueing writes no event, and other processes sharing
//   the database do not stream theirs.
// - Rendering uses createElement and textContent only, never innerHTML, so nothing the API
//   returns (paths, reasons, agent names) can become markup.
'use strict';

(() => {
  const TOKEN_KEY = 'leasehold.token';
  // How often the leases are re-read when no event says so.
  const REFRESH_EVERY_MS = 3000;
  // How often the time-left bars move.
  const TICK_MS = 250;
  // History events kept in memory, and shown at most.
  const HISTORY_KEEP = 2000;
  const HISTORY_SHOW = 300;
  // Reconnection delays of the event stream, in milliseconds.
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    whoami: null,
    leases: [],
    waiters: [],
    settings: null,
    // History events by id, from /v1/history and the live stream.
    events: new Map(),
    lastEventId: null,
    stream: null,
    timers: [],
    refreshTimer: null,
    refreshing: false,
    refreshAgain: false,
    // Lease ids whose expiry already triggered a refresh.
    expirySeen: new Set(),
    // Folder keys the user closed in the tree.
    closedFolders: new Set(),
    // What each section was last drawn from, to skip redrawing what did not change.
    drawn: {},
    // Bumped on every connect and disconnect, so that late answers of an old session are
    // dropped.
    generation: 0,
  };

  // ---------------------------------------------------------------------------------------
  // The server's clock.
  //
  // Lease times are the server's, and the browser's clock may differ (another machine, or a
  // test server whose lease clock is set by hand). Each answer bounds the offset between the
  // two (server time minus browser time):
  // - the Date header is the server's system time rounded down to the second, taken while
  //   the request was in flight: offset >= date - received and offset <= date + 1000 - sent;
  // - a time the server wrote (a lease's updated_at, an event's event_at) had passed on the
  //   server's lease clock when the answer arrived: offset >= written - received.
  // The page keeps the bounds of recent answers and takes the middle of the range. When the
  // two kinds disagree (a lease clock that is not the system clock), the written times win,
  // since they are what expiry follows.
  const clock = {
    samples: [],
    add(low, high) {
      if (!Number.isFinite(low) && !Number.isFinite(high)) return;
      this.samples.push({ low, high });
      if (this.samples.length > 64) this.samples.shift();
    },
    offset() {
      let low = -Infinity;
      let high = Infinity;
      for (const s of this.samples) {
        low = Math.max(low, s.low);
        high = Math.min(high, s.high);
      }
      if (low === -Infinity && high === Infinity) return 0;
      if (low === -Infinity) return high - 500;
      if (high === Infinity || low > high) return low;
      return (low + high) / 2;
    },
    now() {
      return Date.now() + this.offset();
    },
    noteResponse(response, sent, received) {
      const date = Date.parse(response.headers.get('Date') || '');
      if (Number.isFinite(date)) this.add(date - received, date + 1000 - sent);
    },
    noteWritten(times, received) {
      let latest = -Infinity;
      for (const t of times) {
        const ms = Date.parse(t);
        if (Number.isFinite(ms) && ms > latest) latest = ms;
      }
      if (Number.isFinite(latest)) this.add(latest - received, Infinity);
    },
  };

  // ---------------------------------------------------------------------------------------
  // Talking to the API.

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One API call with the token. Answers {json, received}; throws ApiError on an error answer.
  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const sent = Date.now();
    const response = await fetch(path, init);
    const received = Date.now();
    clock.noteResponse(response, sent, received);
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    if (!response.ok) {
      const error = (json && json.error) || {};
      throw new ApiError(response.status, error.code || '', error.message || text || response.statusText);
    }
    return { json, received };
  }

  function describe(error) {
    if (error instanceof ApiError) return `${error.message} (${error.status} ${error.code})`;
    return `cannot reach the server: ${error && error.message ? error.message : error}`;
  }

  function showError(error) {
    $('error-text').textContent = typeof error === 'string' ? error : describe(error);
    $('error').hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error-text').textContent = '';
  }

  function notice(text) {
    $('notice').textContent = text;
  }

  // An error while connected: a refused token ends the session, anything else is shown.
  function reportError(error, generation) {
    if (generation !== state.generation) return;
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      disconnect();
      showError('The server refused the token (it is unknown or was revoked). Enter another one.');
      return;
    }
    showError(error);
  }

  // ---------------------------------------------------------------------------------------
  // The event stream, read with fetch() and parsed here (the text/event-stream format).

  // Splits a stream of text into events: lines end with \n, \r\n or \r; a blank line ends an
  // event; `field: value` lines fill it; lines starting with ':' are comments (heartbeats).
  class SseParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buffer = '';
      this.reset();
    }

    reset() {
      this.type = '';
      this.data = [];
      this.id = null;
    }

    push(text) {
      this.buffer += text;
      // A trailing \r may be the first half of \r\n: keep it until the next chunk.
      const keep = this.buffer.endsWith('\r') ? 1 : 0;
      const ready = this.buffer.slice(0, this.buffer.length - keep);
      this.buffer = this.buffer.slice(this.buffer.length - keep);
      const lines = ready.split(/\r\n|\r|\n/);
      // The last piece has no line end yet.
      this.buffer = lines.pop() + this.buffer;
      for (const line of lines) this.line(line);
    }

    line(line) {
      if (line === '') {
        if (this.data.length > 0) {
          this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.reset();
        return;
      }
      if (line.startsWith(':')) return;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.type = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
  }

  // Keeps one event stream open while connected, reconnecting with Last-Event-ID so that
  // events missed while disconnected are replayed by the server.
  async function streamEvents(generation) {
    let delay = RECONNECT_MIN_MS;
    while (generation === state.generation) {
      const controller = new AbortController();
      state.stream = controller;
      try {
        const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
        if (state.lastEventId !== null) headers['Last-Event-ID'] = String(state.lastEventId);
        const sent = Date.now();
        const response = await fetch('/v1/events', { headers, cache: 'no-store', signal: controller.signal });
        clock.noteResponse(response, sent, Date.now());
        if (response.status === 401) {
          reportError(new ApiError(401, 'unauthorized', 'token refused'), generation);
          return;
        }
        if (!response.ok || !response.body) throw new Error(`the event stream answered ${response.status}`);
        setConnection('live');
        delay = RECONNECT_MIN_MS;
        // Anything may have happened while the stream was down.
        scheduleRefresh();
        const parser = new SseParser((event) => onServerEvent(event, generation));
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(decoder.decode(value, { stream: true }));
        }
      } catch (error) {
        if (generation !== state.generation) return;
      }
      if (generation !== state.generation) return;
      setConnection('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  function onServerEvent(message, generation) {
    if (generation !== state.generation) return;
    if (message.type === 'lagged') {
      // The server dropped events for this slow client: read them from the history.
      loadHistory(generation, true);
      scheduleRefresh();
      return;
    }
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    if (message.id !== null) state.lastEventId = message.id;
    clock.noteWritten([event.event_at], Date.now());
    addEvents([event]);
    scheduleRefresh();
  }

  function setConnection(status) {
    const pill = $('connection');
    pill.className = `pill ${status}`;
    pill.textContent = { live: 'live', reconnecting: 'reconnecting…', offline: 'not connected' }[status];
  }

  // ---------------------------------------------------------------------------------------
  // Lease keys: the same overlap rule as the server's (src/path.rs). A key ending in '/' is a
  // folder and covers every key that starts with it.

  function normalisePath(input) {
    const text = input.trim();
    if (text === '') return '';
    const parts = [];
    let folder = text.endsWith('/');
    for (const part of text.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        parts.pop();
        continue;
      }
      parts.push(part);
    }
    const last = text.split('/').pop();
    if (last === '.' || last === '..') folder = true;
    if (parts.length === 0) return '';
    return parts.join('/') + (folder ? '/' : '');
  }

  function overlaps(a, b) {
    return a === b || (a.endsWith('/') && b.startsWith(a)) || (b.endsWith('/') && a.startsWith(b));
  }

  // The top-level folder or file of a key: `src/a/b.rs` -> `src/`.
  function topLevel(key) {
    const slash = key.indexOf('/');
    return slash < 0 ? key : key.slice(0, slash + 1);
  }

  // ---------------------------------------------------------------------------------------
  // Reading the leases.

  function scheduleRefresh() {
    if (state.refreshTimer !== null) return;
    // Events often come in bursts (one per path of an acquisition): read once for all.
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      refreshLeases();
    }, 40);
  }

  async function refreshLeases() {
    if (state.refreshing) {
      state.refreshAgain = true;
      return;
    }
    const generation = state.generation;
    state.refreshing = true;
    try {
      do {
        state.refreshAgain = false;
        const { json, received } = await api('GET', '/v1/leases');
        const leases = json.leases || [];
        clock.noteWritten(leases.map((l) => l.updated_at), received);
        const groups = [...new Set(leases.map((l) => topLevel(l.file_path)))];
        const statuses = await Promise.all(
          groups.map((g) => api('GET', `/v1/status?path=${encodeURIComponent(g)}`)),
        );
        const waiters = [];
        const seen = new Set();
        for (const { json: status } of statuses) {
          for (const waiter of status.waiters || []) {
            if (!seen.has(waiter.id)) {
              seen.add(waiter.id);
              waiters.push(waiter);
            }
          }
        }
        if (generation !== state.generation) return;
        state.leases = leases;
        state.waiters = waiters;
        renderLive();
      } while (state.refreshAgain && generation === state.generation);
    } catch (error) {
      reportError(error, generation);
    } finally {
      state.refreshing = false;
    }
  }

  // Reads the newest history events: all of them (`everything`), or those matching the path
  // and agent filters, which finds matches older than the events this page holds.
  async function loadHistory(generation, everything) {
    const filter = everything ? {} : historyFilter();
    const query = new URLSearchParams({ order: 'newest', limit: String(HISTORY_SHOW) });
    if (filter.path) query.set('path', filter.path);
    if (filter.agent) query.set('agent', filter.agent);
    try {
      const { json, received } = await api('GET', `/v1/history?${query}`);
      if (generation !== state.generation) return;
      const events = json.events || [];
      clock.noteWritten(events.slice(0, 1).map((e) => e.event_at), received);
      if (everything && state.lastEventId === null) {
        // The event stream starts after the newest event read here (the server replays what
        // came in between), so that no event falls between the two.
        state.lastEventId = events.length ? String(events[0].id) : '0';
      }
      addEvents(events);
    } catch (error) {
      reportError(error, generation);
    }
  }

  async function loadSettings(generation) {
    try {
      const { json } = await api('GET', '/v1/config');
      if (generation !== state.generation) return;
      state.settings = json;
      renderSettings();
    } catch (error) {
      reportError(error, generation);
    }
  }

  function addEvents(events) {
    for (const event of events) state.events.set(event.id, event);
    if (state.events.size > HISTORY_KEEP) {
      const ids = [...state.events.keys()].sort((a, b) => a - b);
      for (const id of ids.slice(0, ids.length - HISTORY_KEEP)) state.events.delete(id);
    }
    renderHistory();
    renderAgents();
  }

  // ---------------------------------------------------------------------------------------
  // Drawing.

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = value;
      else if (name === 'className') node.className = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child);
    }
    return node;
  }

  // Draws a section only when what it shows changed, keeping the focused control focused
  // across the redraw (a keyboard user must not lose their place every few seconds).
  function redraw(name, data, draw) {
    const key = JSON.stringify(data);
    if (state.drawn[name] === key) return;
    state.drawn[name] = key;
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focusKey
      : undefined;
    draw();
    if (focused) {
      const again = document.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function formatLeft(ms) {
    if (ms <= 0) return 'expired';
    const seconds = Math.ceil(ms / 1000);
    if (seconds < 60) return `${seconds}s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m ${String(seconds % 60).padStart(2, '0')}s`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours}h ${String(minutes % 60).padStart(2, '0')}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  // "2027-01-15 08:00:00" in UTC, like the rest of leasehold.
  function formatTime(rfc3339) {
    const ms = Date.parse(rfc3339);
    if (!Number.isFinite(ms)) return rfc3339;
    return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
  }

  // A bar of the time left, moved by tick().
  function timeLeft(lease) {
    const fill = el('span', { className: 'fill' });
    const bar = el('span', {
      className: 'bar',
      role: 'progressbar',
      'aria-label': `time left on ${lease.file_path} for ${lease.agent_id}`,
      'aria-valuemin': 0,
      'aria-valuemax': Math.round(lease.ttl_ms / 1000),
    }, fill);
    const text = el('span', { className: 'left' });
    const box = el('span', {
      className: 'time-left',
      'data-expires-at': Date.parse(lease.expires_at),
      'data-ttl-ms': lease.ttl_ms,
      'data-lease-id': lease.id,
    }, bar, text);
    tickOne(box, clock.now());
    return box;
  }

  function tickOne(box, now) {
    const expiresAt = Number(box.dataset.expiresAt);
    const ttl = Math.max(1, Number(box.dataset.ttlMs));
    const left = expiresAt - now;
    const fraction = Math.max(0, Math.min(1, left / ttl));
    const bar = box.firstChild;
    bar.firstChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    const label = formatLeft(left);
    box.lastChild.textContent = label;
    bar.setAttribute('aria-valuenow', String(Math.max(0, Math.round(left / 1000))));
    bar.setAttribute('aria-valuetext', left > 0 ? `${label} left` : 'expired');
    const level = left <= 0 ? 'expired' : fraction < 0.2 ? 'low' : fraction < 0.5 ? 'mid' : 'high';
    if (box.dataset.level !== level) {
      box.dataset.level = level;
      box.className = `time-left ${level}`;
    }
    if (left <= 0 && !state.expirySeen.has(box.dataset.leaseId)) {
      // Past its time: the server no longer counts it as active; read the leases again.
      state.expirySeen.add(box.dataset.leaseId);
      scheduleRefresh();
    }
  }

  function tick() {
    const now = clock.now();
    for (const box of document.querySelectorAll('.time-left')) tickOne(box, now);
    $('clock').textContent = state.whoami
      ? `server time ${new Date(now).toISOString().slice(11, 19)} UTC`
      : '';
  }

  function modeBadge(mode) {
    return el('span', { className: `badge mode-${mode}`, text: mode });
  }

  function waiterItem(waiter) {
    return el('li', { 'data-waiter-id': waiter.id },
      el('strong', { text: waiter.agent_id }), ' ',
      modeBadge(waiter.mode), ' ',
      el('code', { text: waiter.file_path }));
  }

  // The waiters queued behind a held key, in queue order.
  function waitersBehind(key) {
    return state.waiters.filter((w) => overlaps(w.file_path, key));
  }

  function renderLive() {
    const leases = state.leases;
    const waiters = state.waiters;
    const data = {
      leases: leases.map((l) => [l.id, l.file_path, l.agent_id, l.mode, l.fencing_token, l.reason, l.expires_at, l.ttl_ms]),
      waiters: waiters.map((w) => [w.id, w.file_path, w.agent_id, w.mode]),
    };
    redraw('leases', data, renderLeases);
    redraw('tree', data, renderTree);
    renderAgents();
    const count = `${leases.length} held, ${waiters.length} waiting`;
    // A live region: a screen reader hears the counts change.
    if ($('lease-count').textContent !== count) $('lease-count').textContent = count;
  }

  function renderLeases() {
    const body = $('leases').tBodies[0];
    const rows = state.leases.map((lease) => {
      const waiting = waitersBehind(lease.file_path);
      return el('tr', { 'data-lease-id': lease.id, 'data-path': lease.file_path, 'data-agent': lease.agent_id },
        el('td', { className: 'path' }, el('code', { text: lease.file_path })),
        el('td', { className: 'holder', text: lease.agent_id }),
        el('td', {}, modeBadge(lease.mode)),
        el('td', { className: 'num token', text: lease.fencing_token ?? '' }),
        el('td', { className: 'reason', text: lease.reason ?? '' }),
        el('td', {}, timeLeft(lease)),
        el('td', {}, waiting.length === 0
          ? el('span', { className: 'muted', text: 'none' })
          : el('ol', { className: 'queue' }, ...waiting.map(waiterItem))));
    });
    body.replaceChildren(...rows);
    $('no-leases').hidden = rows.length > 0;
    $('leases').hidden = rows.length === 0;
  }

  // The workspace as a tree: folders that have leases (or waiters) at or below them.
  function renderTree() {
    const root = { name: '', key: '', children: new Map(), leases: [], waiters: [] };
    const nodeFor = (key) => {
      const parts = key.split('/').filter((p) => p !== '');
      const folder = key.endsWith('/');
      let node = root;
      parts.forEach((part, i) => {
        const isFolder = i < parts.length - 1 || folder;
        const childKey = parts.slice(0, i + 1).join('/') + (isFolder ? '/' : '');
        if (!node.children.has(childKey)) {
          node.children.set(childKey, { name: part, key: childKey, folder: isFolder, children: new Map(), leases: [], waiters: [] });
        }
        node = node.children.get(childKey);
      });
      return node;
    };
    for (const lease of state.leases) nodeFor(lease.file_path).leases.push(lease);
    for (const waiter of state.waiters) nodeFor(waiter.file_path).waiters.push(waiter);

    const details = (node) => {
      const items = [];
      for (const lease of node.leases) {
        items.push(el('li', { className: 'tree-lease', 'data-lease-id': lease.id },
          el('strong', { className: 'holder', text: lease.agent_id }), ' ',
          modeBadge(lease.mode), ' ',
          el('span', { className: 'token', title: 'fencing token', text: `#${lease.fencing_token ?? ''}` }), ' ',
          lease.reason ? el('span', { className: 'reason', text: lease.reason }) : null, ' ',
          timeLeft(lease)));
      }
      for (const waiter of node.waiters) {
        items.push(el('li', { className: 'tree-waiter', 'data-waiter-id': waiter.id },
          el('span', { className: 'muted', text: 'waiting: ' }),
          el('strong', { text: waiter.agent_id }), ' ', modeBadge(waiter.mode)));
      }
      return items.length ? el('ul', { className: 'tree-leases' }, ...items) : null;
    };
    const draw = (node) => {
      const children = [...node.children.values()].sort((a, b) => a.key.localeCompare(b.key));
      const list = el('ul', { className: 'tree-level' });
      for (const child of children) {
        const label = el('span', { className: child.folder ? 'folder' : 'file', text: child.name + (child.folder ? '/' : '') });
        if (child.folder) {
          const summary = el('summary', { 'data-focus-key': `tree:${child.key}` }, label);
          const box = el('details', { 'data-key': child.key, open: !state.closedFolders.has(child.key) },
            summary, details(child), draw(child));
          box.addEventListener('toggle', () => {
            if (box.open) state.closedFolders.delete(child.key);
            else state.closedFolders.add(child.key);
          });
          list.append(el('li', { 'data-key': child.key }, box));
        } else {
          list.append(el('li', { 'data-key': child.key }, label, details(child)));
        }
      }
      return children.length ? list : null;
    };
    const tree = draw(root);
    $('tree').replaceChildren(...(tree ? [tree] : []));
    $('no-tree').hidden = tree !== null;
  }

  // Per agent: what it holds, what it waits for, and whether it lost leases to expiry or to a
  // force-release (in the history this page has read).
  function renderAgents() {
    const agents = new Map();
    const agent = (id) => {
      if (!agents.has(id)) agents.set(id, { id, holds: [], waits: [], expired: 0, forced: 0 });
      return agents.get(id);
    };
    for (const lease of state.leases) agent(lease.agent_id).holds.push(lease.file_path);
    for (const waiter of state.waiters) agent(waiter.agent_id).waits.push(waiter.file_path);
    for (const event of state.events.values()) {
      if (event.event_type === 'expired') agent(event.agent_id).expired += 1;
      if (event.event_type === 'force_released') agent(event.agent_id).forced += 1;
    }
    const list = [...agents.values()].sort((a, b) =>
      (b.holds.length + b.waits.length > 0) - (a.holds.length + a.waits.length > 0) || a.id.localeCompare(b.id));
    const admin = Boolean(state.whoami && state.whoami.admin);
    redraw('agents', { list, admin }, () => {
      const items = list.map((a) => {
        const marked = a.expired > 0 || a.forced > 0;
        const marks = [];
        if (a.expired) marks.push(el('span', { className: 'badge mark', text: `${a.expired} expired` }));
        if (a.forced) marks.push(el('span', { className: 'badge mark', text: `${a.forced} force-released` }));
        const line = (what, paths) => el('p', { className: 'agent-line' },
          el('span', { className: 'muted', text: `${what}: ` }),
          paths.length ? paths.map((p) => p).join(', ') : el('span', { className: 'muted', text: 'nothing' }));
        const button = admin && (a.holds.length || a.waits.length)
          ? el('button', {
            type: 'button',
            className: 'danger small admin-only',
            'data-force-agent': a.id,
            'data-focus-key': `force:${a.id}`,
            'aria-label': `Force-release every lease of ${a.id}`,
            text: 'Force-release…',
          })
          : null;
        if (button) button.addEventListener('click', () => openForceDialog(a.id));
        return el('li', { className: marked ? 'agent-card marked' : 'agent-card', 'data-agent': a.id },
          el('div', { className: 'agent-head' },
            el('strong', { text: a.id }), ...marks, button),
          line('holds', a.holds), line('waits for', a.waits));
      });
      $('agents').replaceChildren(...items);
      $('no-agents').hidden = items.length > 0;
      $('agent-names').replaceChildren(...list.map((a) => el('option', { value: a.id })));
    });
  }

  function historyFilter() {
    return {
      path: normalisePath($('filter-path').value),
      agent: $('filter-agent').value.trim(),
      type: $('filter-type').value,
    };
  }

  // Draws the history newest first, adding and removing rows rather than redrawing, so that
  // a screen reader (role="log") hears only the new events.
  function renderHistory() {
    const filter = historyFilter();
    const shown = [...state.events.values()]
      .filter((e) => (!filter.type || e.event_type === filter.type)
        && (!filter.agent || e.agent_id === filter.agent)
        && (!filter.path || overlaps(filter.path, e.file_path)))
      .sort((a, b) => b.id - a.id)
      .slice(0, HISTORY_SHOW);
    const list = $('history');
    const existing = new Map([...list.children].map((li) => [li.dataset.eventId, li]));
    const keep = new Set(shown.map((e) => String(e.id)));
    for (const [id, li] of existing) if (!keep.has(id)) li.remove();
    let cursor = list.firstElementChild;
    for (const event of shown) {
      const id = String(event.id);
      let li = existing.get(id);
      if (!li || !li.isConnected) li = historyItem(event);
      if (li === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        list.insertBefore(li, cursor);
      }
    }
    $('no-history').hidden = shown.length > 0;
  }

  function historyItem(event) {
    return el('li', { 'data-event-id': event.id, 'data-event-type': event.event_type, className: `event ${event.event_type}` },
      el('time', { datetime: event.event_at, text: formatTime(event.event_at) }),
      el('span', { className: `badge type-${event.event_type}`, text: event.event_type }),
      el('strong', { className: 'who', text: event.agent_id }),
      el('code', { className: 'path', text: event.file_path }),
      el('span', { className: 'token', text: event.fencing_token != null ? `#${event.fencing_token}` : '' }),
      el('span', { className: 'reason', text: event.reason || '' }));
  }

  function renderSettings() {
    const settings = state.settings || {};
    const admin = Boolean(state.whoami && state.whoami.admin);
    const view = $('settings-view');
    view.replaceChildren(...Object.entries(settings).flatMap(([key, value]) => [
      el('dt', { text: key }), el('dd', { text: String(value) }),
    ]));
    view.hidden = admin;
    const form = $('settings-form');
    if (!admin) {
      form.replaceChildren();
      form.hidden = true;
      return;
    }
    const rows = Object.entries(settings).map(([key, value]) => {
      const id = `setting-${key}`;
      const input = typeof value === 'boolean'
        ? el('input', { id, type: 'checkbox', 'data-key': key, checked: value })
        : el('input', { id, type: 'number', step: 1, 'data-key': key, value });
      return el('div', { className: 'setting' }, el('label', { for: id, text: key }), input);
    });
    form.replaceChildren(...rows,
      el('button', { type: 'submit', id: 'save-settings', text: 'Save settings' }));
    form.hidden = false;
  }

  // ---------------------------------------------------------------------------------------
  // Admin actions. The server checks the token; these are only shown to admins.

  function openForceDialog(agent) {
    $('force-agent').textContent = agent;
    $('force-dialog').dataset.agent = agent;
    $('force-dialog').showModal();
    $('force-reason').focus();
  }

  async function forceRelease(event) {
    event.preventDefault();
    const dialog = $('force-dialog');
    const agent = dialog.dataset.agent;
    const reason = $('force-reason').value.trim();
    if (!reason) return;
    const generation = state.generation;
    try {
      const { json } = await api('POST', `/v1/agents/${encodeURIComponent(agent)}/force-release`, { reason });
      dialog.close();
      notice(`Force-released ${json.released} lease(s) of ${agent}.`);
      scheduleRefresh();
    } catch (error) {
      dialog.close();
      reportError(error, generation);
    }
  }

  async function runCleanup() {
    const generation = state.generation;
    try {
      const { json } = await api('POST', '/v1/cleanup');
      notice(`Cleanup marked ${json.expired} lease(s) expired.`);
      scheduleRefresh();
    } catch (error) {
      reportError(error, generation);
    }
  }

  async function saveSettings(event) {
    event.preventDefault();
    const generation = state.generation;
    const changed = [];
    for (const input of $('settings-form').querySelectorAll('input[data-key]')) {
      const key = input.dataset.key;
      const value = input.type === 'checkbox' ? input.checked : Number(input.value);
      if (input.type !== 'checkbox' && (input.value.trim() === '' || !Number.isFinite(value))) {
        showError(`${key} must be a number`);
        return;
      }
      if (state.settings[key] !== value) changed.push([key, value]);
    }
    try {
      for (const [key, value] of changed) {
        const { json } = await api('PUT', `/v1/config/${encodeURIComponent(key)}`, { value });
        state.settings = json;
      }
      notice(changed.length ? `Saved ${changed.map(([k]) => k).join(', ')}.` : 'No setting changed.');
      clearError();
    } catch (error) {
      reportError(error, generation);
    }
    renderSettings();
  }

  // ---------------------------------------------------------------------------------------
  // Connecting and disconnecting.

  async function connect(token) {
    disconnect();
    const generation = state.generation;
    state.token = token;
    let whoami;
    try {
      ({ json: whoami } = await api('GET', '/v1/whoami'));
    } catch (error) {
      if (generation !== state.generation) return;
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showError(error instanceof ApiError && error.status === 401
        ? 'The server refused the token (it is unknown or was revoked).'
        : error);
      $('token-input').focus();
      return;
    }
    if (generation !== state.generation) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    state.whoami = whoami;
    clearError();
    $('token-form').hidden = true;
    $('token-input').value = '';
    $('identity').hidden = false;
    $('identity-agent').textContent = whoami.agent_id;
    $('identity-admin').hidden = !whoami.admin;
    $('admin-tools').hidden = !whoami.admin;
    $('main').hidden = false;
    document.body.dataset.admin = whoami.admin ? 'true' : 'false';
    loadSettings(generation);
    refreshLeases();
    (async () => {
      await loadHistory(generation, true);
      const filter = historyFilter();
      if (filter.path || filter.agent) loadHistory(generation, false);
      streamEvents(generation);
    })();
    state.timers.push(setInterval(() => {
      if (!document.hidden) refreshLeases();
    }, REFRESH_EVERY_MS));
  }

  // Forgets the session: stops the stream and timers and clears what was shown.
  function disconnect() {
    state.generation += 1;
    if (state.stream) state.stream.abort();
    state.stream = null;
    for (const timer of state.timers) clearInterval(timer);
    state.timers = [];
    state.token = null;
    state.whoami = null;
    state.leases = [];
    state.waiters = [];
    state.settings = null;
    state.events = new Map();
    state.lastEventId = null;
    state.drawn = {};
    setConnection('offline');
    $('main').hidden = true;
    $('identity').hidden = true;
    $('token-form').hidden = false;
    $('admin-tools').hidden = true;
    $('settings-form').hidden = true;
    $('history').replaceChildren();
    delete document.body.dataset.admin;
  }

  function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token-input').value.trim();
      if (token) connect(token);
    });
    $('forget-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      disconnect();
      clearError();
      notice('Token forgotten.');
      $('token-input').focus();
    });
    $('error-close').addEventListener('click', clearError);
    $('force-form').addEventListener('submit', forceRelease);
    $('force-cancel').addEventListener('click', () => $('force-dialog').close());
    $('run-cleanup').addEventListener('click', runCleanup);
    $('settings-form').addEventListener('submit', saveSettings);

    // Filters: the type is applied here; path and agent also ask the server, which finds
    // matching events older than those this page holds.
    let filterTimer = null;
    const onFilter = () => {
      renderHistory();
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => loadHistory(state.generation, false), 250);
    };
    $('filter-path').addEventListener('input', onFilter);
    $('filter-agent').addEventListener('input', onFilter);
    $('filter-type').addEventListener('change', renderHistory);
    // A reset changes the fields after the event: draw once they are cleared.
    $('history-filters').addEventListener('reset', () => setTimeout(onFilter, 0));
    $('history-filters').addEventListener('submit', (event) => event.preventDefault());

    setInterval(tick, TICK_MS);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) connect(token);
    else $('token-input').focus();
  }

  start();
})();
