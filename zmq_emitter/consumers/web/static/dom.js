// Building the page's elements: every string goes in as text (a text node or textContent), never as HTML.
// Nothing here sets innerHTML, and attributes are only ever the fixed ones the page's own code names.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// "1h 02m", "3m 05s", "12.4s"
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const s = Math.floor(seconds % 60), m = Math.floor(seconds / 60) % 60, hr = Math.floor(seconds / 3600);
  const pad = (n) => String(n).padStart(2, '0');
  return hr ? `${hr}h ${pad(m)}m` : `${m}m ${pad(s)}s`;
}

// Seconds since the epoch of a run's start and end (events' "created" times, else when the broker saw it).
export function runTimes(run) {
  const start = run.started ? Date.parse(run.started) / 1000 : run.first_seen;
  let end = run.ended ? Date.parse(run.ended) / 1000 : run.ended_at;
  if (end === null || end === undefined || !Number.isFinite(end)) end = null;
  return { start: Number.isFinite(start) ? start : null, end };
}

export function when(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return '';
  const d = new Date(epochSeconds * 1000);
  return d.toLocaleString(undefined, { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit',
                                       minute: '2-digit', second: '2-digit' });
}

export const OUTCOMES = ['ok', 'changed', 'failed', 'unreachable', 'skipped'];
export const FINAL = new Set(['successful', 'failed', 'timeout', 'canceled', 'error']);
