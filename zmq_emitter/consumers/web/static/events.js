// The events a run's page received, each once, for a click on a line (its fields, not its output: the output view
// holds that) and for telling a repeat.  Bounded: a page left open on a long run would otherwise hold every event
// the run ever had (the server holds only --max-events of them); beyond `limit`, the oldest go, `chunk` at a time.
//
//   const log = new EventLog();
//   log.add({k: 'pub.1', ...})  -> 0 (its index: indexes stay as they were when older events go), -1: a repeat
//   log.get(0)                  -> the event, or undefined once it is gone

export const MAX_EVENTS = 200000;

export class EventLog {
  constructor(limit = MAX_EVENTS, chunk = 20000) {
    this.limit = limit;
    this.chunk = chunk;
    this.kept = [];
    this.keys = new Set();
    this.gone = 0; // events dropped from the front
    this.repeats = 0;
  }

  get length() { return this.gone + this.kept.length; }

  add(ev) {
    if (this.keys.has(ev.k)) { this.repeats += 1; return -1; }
    this.keys.add(ev.k);
    this.kept.push(ev);
    if (this.kept.length > this.limit + this.chunk) {
      const old = this.kept.splice(0, this.kept.length - this.limit);
      for (const e of old) this.keys.delete(e.k);
      this.gone += old.length;
    }
    return this.length - 1;
  }

  get(index) { return index >= this.gone ? this.kept[index - this.gone] : undefined; }

  indexOf(key) {
    const at = this.kept.findIndex((e) => e.k === key);
    return at < 0 ? -1 : at + this.gone;
  }
}
