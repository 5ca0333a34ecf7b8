// zmq-emitter web: the runs list (#/) and a run's page (#/run/IDENT), fed by server-sent events.
// Every string that came from the bus is inserted as text (dom.js h(), textContent), never as HTML.
import { h, clear, duration, runTimes, when, OUTCOMES, FINAL } from './dom.js';
import { OutputView } from './output.js';
import { EventLog } from './events.js';

const app = document.getElementById('app');
const crumb = document.getElementById('crumb');
const linkState = document.getElementById('link-state');
let page = null; // the page shown: {close()}

// What a test (or a curious person in the console) may read of the page's state.
const inspect = { page: null };
window.zmqEmitterWeb = {
  events: () => (inspect.page && inspect.page.events ? inspect.page.events.kept.map((e) => [e.k, e.c, e.e]) : []),
  repeats: () => (inspect.page && inspect.page.events ? inspect.page.events.repeats : null),
  run: () => (inspect.page && inspect.page.run ? inspect.page.run : null),
  runs: () => (inspect.page && inspect.page.runs ? [...inspect.page.runs.values()] : []),
};

function connection(url, handlers) {
  const source = new EventSource(url);
  source.onopen = () => { linkState.textContent = 'live'; linkState.className = 'link-state live'; };
  source.onerror = () => { linkState.textContent = 'reconnecting…'; linkState.className = 'link-state down'; };
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handle(JSON.parse(e.data)));
  }
  return source;
}

function outcomeBadges(hosts) {
  return h('span', { class: 'badges' }, OUTCOMES.filter((o) => hosts[o]).map(
    (o) => h('span', { class: `badge ${o}`, title: `hosts ${o}`, text: `${hosts[o]} ${o}` })));
}

function statusBadge(status) {
  return h('span', { class: `status ${status}`, text: status });
}

function runDuration(run) {
  const { start, end } = runTimes(run);
  if (start === null) return '';
  const stop = end !== null ? end : (FINAL.has(run.status) ? null : Date.now() / 1000);
  return stop === null ? '' : duration(stop - start);
}

// ---- the runs list -------------------------------------------------------------------------------

function runsPage() {
  crumb.textContent = 'runs';
  const runs = new Map();
  const gapsNote = h('p', { class: 'gaps-note', hidden: true });
  const status = h('select', { id: 'status-filter', 'aria-label': 'status' },
    ['all', 'running', 'successful', 'failed', 'error', 'canceled', 'timeout'].map((s) => h('option', { value: s, text: s })));
  const search = h('input', { id: 'search', type: 'search', placeholder: 'search ident or playbook', 'aria-label': 'search' });
  const body = h('tbody');
  const table = h('table', { class: 'runs' },
    h('thead', {}, h('tr', {}, ['status', 'run', 'playbook', 'started', 'duration', 'hosts', 'events'].map((t) => h('th', { text: t })))),
    body);
  const empty = h('p', { class: 'empty', text: 'No runs yet: they appear here as they start.' });
  clear(app).append(h('section', { class: 'runs-page' },
    h('div', { class: 'filters' }, status, search), gapsNote, table, empty));

  let queued = false;
  const render = () => {
    queued = false;
    const want = status.value, term = search.value.trim().toLowerCase();
    const shown = [...runs.values()].filter((run) => {
      const st = FINAL.has(run.status) ? run.status : 'running';
      if (want !== 'all' && st !== want) return false;
      return !term || run.ident.toLowerCase().includes(term) || run.playbook.toLowerCase().includes(term);
    }).sort((a, b) => (runTimes(b).start || 0) - (runTimes(a).start || 0));
    body.replaceChildren(...shown.map((run) => h('tr', { class: `run ${run.status}`, dataset: { ident: run.ident } },
      h('td', {}, statusBadge(run.status)),
      h('td', {}, h('a', { href: `#/run/${encodeURIComponent(run.ident)}`, text: run.ident })),
      h('td', { text: run.playbook }),
      h('td', { text: when(runTimes(run).start) }),
      h('td', { text: runDuration(run) }),
      h('td', {}, outcomeBadges(run.hosts)),
      h('td', { class: 'num', text: run.events }))));
    empty.hidden = runs.size > 0;
  };
  const schedule = () => { if (!queued) { queued = true; requestAnimationFrame(render); } };
  status.addEventListener('change', schedule);
  search.addEventListener('input', schedule);
  const source = connection('/api/runs/stream', {
    runs: ({ changed, gone }) => {
      for (const run of changed) runs.set(run.ident, run);
      for (const ident of gone) runs.delete(ident);
      schedule();
    },
    gaps: (gaps) => {
      const count = gaps.reduce((n, g) => n + g.count, 0);
      gapsNote.hidden = count === 0;
      gapsNote.textContent = `${count} message(s) of publishers of no run shown were lost for good (not in the broker's history).`;
    },
  });
  const ticker = setInterval(schedule, 1000); // running durations
  inspect.page = { runs };
  return { close: () => { source.close(); clearInterval(ticker); } };
}

// ---- a run's page --------------------------------------------------------------------------------

function runPage(ident) {
  crumb.textContent = ident;
  const events = new EventLog(); // what the page received, each once: {k, c, e, h, t, s, f, m}
  const head = h('div', { class: 'run-head' });
  const bar = h('div', { class: 'host-bar', id: 'host-bar' });
  const hostBody = h('tbody');
  const hostTable = h('table', { class: 'hosts', id: 'hosts' },
    h('thead', {}, h('tr', {}, ['host', ...OUTCOMES].map((t) => h('th', { text: t })))), hostBody);
  const failures = h('ul', { class: 'failures', id: 'failures' });
  const notes = h('div', { class: 'notes' });
  const output = h('div', { class: 'output', id: 'output', tabindex: '0' });
  const detail = h('pre', { class: 'detail', id: 'detail' });
  const detailBox = h('aside', { class: 'detail-box', hidden: true },
    h('div', { class: 'detail-head' }, h('span', { id: 'detail-title' }),
      h('button', { type: 'button', text: 'close', onclick: () => { detailBox.hidden = true; } })), detail);
  const count = h('span', { id: 'event-count', text: '0 events' });
  clear(app).append(h('section', { class: 'run-page' }, head, bar, notes,
    h('div', { class: 'columns' },
      h('div', { class: 'main-col' }, h('h2', {}, 'Output · ', count), output),
      h('div', { class: 'side-col' }, h('h2', { text: 'Hosts' }), hostTable, h('h2', { text: 'Failed and unreachable' }),
        failures, detailBox))));
  head.append(h('p', { class: 'waiting', text: `Waiting for run ${ident}…` }));

  const pick = async (index) => {
    const ev = events.get(index);
    if (!ev) return;
    const [pub, seq] = ev.k.split('.');
    document.getElementById('detail-title').textContent = `${ev.e}${ev.h ? ` · ${ev.h}` : ''}`;
    detailBox.hidden = false;
    detail.textContent = 'loading…';
    const response = await fetch(`/api/runs/${encodeURIComponent(ident)}/events/${encodeURIComponent(pub)}/${seq}`);
    detail.textContent = response.ok ? JSON.stringify(await response.json(), null, 2) : `(${response.status}) no longer held by the server`;
  };
  const view = new OutputView(output, pick);
  const state = { events, run: null };
  inspect.page = state;

  const showRun = (run) => {
    state.run = run;
    const { start } = runTimes(run);
    head.replaceChildren(
      h('h1', {}, statusBadge(run.status), ' ', h('span', { class: 'ident', text: run.ident })),
      h('p', { class: 'meta' }, h('span', { text: run.playbook }), h('span', { text: `started ${when(start)}` }),
        h('span', { class: 'duration', text: runDuration(run) }), outcomeBadges(run.hosts)));
    const total = run.host_table.length || 1;
    bar.replaceChildren(...OUTCOMES.filter((o) => run.hosts[o]).map((o) => {
      const part = h('span', { class: `part ${o}`, title: `${run.hosts[o]} host(s) ${o}`, text: `${run.hosts[o]} ${o}` });
      part.style.flexGrow = String(run.hosts[o] / total);
      return part;
    }));
    hostBody.replaceChildren(...run.host_table.map((row) => h('tr', { class: `host ${row.outcome}`, dataset: { host: row.host } },
      h('td', { text: row.host }), OUTCOMES.map((o) => h('td', { class: `num ${row[o] ? o : ''}`, text: row[o] })))));
    failures.replaceChildren(...run.failures.map((f) => h('li', { class: `failure ${f.event}`, dataset: { key: f.k } },
      h('strong', { text: f.host }), ' ', h('span', { class: 'task', text: f.task }), ': ',
      h('span', { class: 'msg', text: f.msg }))));
    const lines = [];
    if (run.dropped) lines.push(`The server no longer holds the first ${run.dropped} events of this run.`);
    if (run.left_out) lines.push(`${run.left_out} message(s) of publishers beyond this run's first 64 were left out.`);
    if (run.gaps) lines.push(`${run.gaps} message(s) of this run's publisher(s) were lost for good (not in the broker's history).`);
    notes.replaceChildren(...lines.map((text) => h('p', { class: 'gap', text })));
  };
  failures.addEventListener('click', (e) => {
    const item = e.target.closest('li');
    const index = item ? events.indexOf(item.dataset.key) : -1;
    if (index >= 0) pick(index);
  });

  const source = connection(`/api/runs/${encodeURIComponent(ident)}/stream`, {
    events: (batch) => {
      for (const ev of batch) {
        const index = events.add(ev); // -1: a repeat (the server's cursor prevents these; counted)
        if (index < 0) continue;
        view.append(ev.s, index, ev.f);
        ev.s = undefined; // held once, by the output view (the server has the whole event for a click)
      }
      count.textContent = `${events.length} events`;
    },
    run: showRun,
  });
  const ticker = setInterval(() => {
    if (state.run && !FINAL.has(state.run.status)) {
      const el = head.querySelector('.duration');
      if (el) el.textContent = runDuration(state.run);
    }
  }, 1000);
  return { close: () => { source.close(); clearInterval(ticker); } };
}

function route() {
  if (page) page.close();
  page = null;
  const match = /^#\/run\/(.+)$/.exec(location.hash);
  let ident = null;
  if (match) {
    try { ident = decodeURIComponent(match[1]); } catch { ident = null; }
  }
  page = ident ? runPage(ident) : runsPage();
}

window.addEventListener('hashchange', route);
// A page left for another stays in the back/forward cache with its streams open, and a browser allows only a
// few connections per server: close them when the page is hidden, open them again if it comes back.
window.addEventListener('pagehide', () => { if (page) { page.close(); page = null; } });
window.addEventListener('pageshow', (e) => { if (e.persisted) route(); });
route();
