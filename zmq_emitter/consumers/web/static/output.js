// A run's output, windowed: only the lines in view (and a few around) are in the DOM, so that a run of
// 10,000+ events scrolls and grows without freezing the page.  Lines have one fixed height; a spacer
// gives the scroll container its full height.  Appends only count an event's lines; its colours are parsed
// (ansi.js) when one of its lines is first shown, so a flood of events costs little more than their count.
// One render per animation frame; the view follows the end of the output while it is scrolled to the end.
import { ansiLines, appendSegments } from './ansi.js';

export const LINE_HEIGHT = 18; // px: the same as .output .row in app.css
const OVERSCAN = 30; // lines rendered above and below the visible ones
export const MAX_LINES = 300000; // beyond this, the oldest lines leave the page
const TRIM_CHUNK = 20000; // ... in chunks: not a copy of the whole array per event
const PARSED_KEPT = 2000; // events whose parsed lines are cached
const NEWLINE = /\r?\n|\r/g;

export class OutputView {
  // root: the scroll container; onPick(eventIndex): a line was clicked
  constructor(root, onPick) {
    this.root = root;
    this.onPick = onPick;
    this.lines = []; // {ev: its event's index, n: its line in the event, f: a failure's line}
    this.texts = new Map(); // event index -> its stdout (insertion order = event order)
    this.parsed = new Map(); // event index -> ansiLines() of it (a bounded cache)
    this.trimmed = 0;
    this.spacer = document.createElement('div');
    this.spacer.className = 'spacer';
    this.rows = document.createElement('div');
    this.rows.className = 'rows';
    this.spacer.append(this.rows);
    root.replaceChildren(this.spacer);
    this.follow = true;
    this.pending = false;
    this.shown = [-1, -1, -1];
    root.addEventListener('scroll', () => {
      this.follow = root.scrollTop + root.clientHeight >= root.scrollHeight - LINE_HEIGHT * 2;
      this.schedule();
    });
    this.rows.addEventListener('click', (e) => {
      const row = e.target.closest('.row');
      if (row && row.dataset.ev !== undefined) this.onPick(Number(row.dataset.ev));
    });
  }

  // One event's stdout (its lines), as event number `ev`; `failed`: highlight its lines.
  append(stdout, ev, failed) {
    if (!stdout) return;
    this.texts.set(ev, stdout);
    const count = (stdout.match(NEWLINE) || []).length + 1;
    for (let n = 0; n < count; n++) this.lines.push({ ev, n, f: failed });
    if (this.lines.length > MAX_LINES + TRIM_CHUNK) {
      const drop = this.lines.length - MAX_LINES;
      this.lines.splice(0, drop);
      this.trimmed += drop;
      const first = this.lines[0].ev;
      for (const key of this.texts.keys()) {
        if (key >= first) break;
        this.texts.delete(key);
        this.parsed.delete(key);
      }
    }
    this.schedule();
  }

  segments(line) {
    let lines = this.parsed.get(line.ev);
    if (lines === undefined) {
      lines = ansiLines(this.texts.get(line.ev) || '');
      this.parsed.set(line.ev, lines);
      if (this.parsed.size > PARSED_KEPT) this.parsed.delete(this.parsed.keys().next().value);
    }
    return lines[line.n] || [];
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  render() {
    const root = this.root, total = this.lines.length;
    this.spacer.style.height = `${total * LINE_HEIGHT}px`;
    if (this.follow) root.scrollTop = root.scrollHeight;
    const first = Math.max(0, Math.floor(root.scrollTop / LINE_HEIGHT) - OVERSCAN);
    const last = Math.min(total, Math.ceil((root.scrollTop + root.clientHeight) / LINE_HEIGHT) + OVERSCAN);
    const key = [first, last, this.trimmed];
    if (key[0] === this.shown[0] && key[1] === this.shown[1] && key[2] === this.shown[2]) return;
    this.shown = key;
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const line = this.lines[i];
      const row = document.createElement('div');
      row.className = line.f ? 'row failed' : 'row';
      row.dataset.ev = String(line.ev);
      appendSegments(row, this.segments(line));
      fragment.append(row);
    }
    this.rows.style.transform = `translateY(${first * LINE_HEIGHT}px)`;
    this.rows.replaceChildren(fragment);
  }
}
