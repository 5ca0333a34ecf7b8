// ANSI colours in Ansible's output, as spans with classes: a small converter (SGR codes only; every other
// escape sequence and control character is dropped, so none shows raw and none acts on the page).
//
//   ansiLines('\x1b[0;32mok: [web1]\x1b[0m\r\nnext')
//   -> [[{text: 'ok: [web1]', cls: 'fg-green'}], [{text: 'next', cls: ''}]]
//
// The text of a segment is inserted with textContent (see appendSegments): it is never HTML.

const COLOURS = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white'];
// CSI ... final byte | OSC ... BEL or ST | any other ESC sequence (intermediates, final) | a lone ESC | C1 CSI
const ESCAPE = /\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]|\x1b|\x9b[0-?]*[ -/]*[@-~]/g;
// Control characters other than tab (newlines are split on first); C1 controls too.
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

export function initialState() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
}

function colour(n) {
  if (n < 8) return COLOURS[n];
  if (n < 16) return `bright-${COLOURS[n - 8]}`;
  return null; // 256-colour cube and greys: shown in the default colour
}

function applySgr(state, params) {
  const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)));
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(state, initialState());
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 3) state.italic = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) { state.bold = false; state.dim = false; }
    else if (c === 23) state.italic = false;
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = COLOURS[c - 30];
    else if (c === 39) state.fg = null;
    else if (c >= 40 && c <= 47) state.bg = COLOURS[c - 40];
    else if (c === 49) state.bg = null;
    else if (c >= 90 && c <= 97) state.fg = `bright-${COLOURS[c - 90]}`;
    else if (c >= 100 && c <= 107) state.bg = `bright-${COLOURS[c - 100]}`;
    else if (c === 38 || c === 48) {
      const key = c === 38 ? 'fg' : 'bg';
      if (codes[i + 1] === 5) { state[key] = colour(codes[i + 2]); i += 2; }
      else if (codes[i + 1] === 2) { state[key] = null; i += 4; }
    }
  }
}

function classes(state) {
  const list = [];
  if (state.fg) list.push(`fg-${state.fg}`);
  if (state.bg) list.push(`bg-${state.bg}`);
  if (state.bold) list.push('b');
  if (state.dim) list.push('d');
  if (state.italic) list.push('i');
  if (state.underline) list.push('u');
  return list.join(' ');
}

// The lines of `text`, each a list of {text, cls}; `state` (colours carried over from earlier text) is updated.
export function ansiLines(text, state = initialState()) {
  const lines = [];
  for (const raw of String(text).split(/\r?\n|\r/)) {
    const segments = [];
    let at = 0;
    const push = (part) => {
      const clean = part.replace(CONTROLS, '');
      if (!clean) return;
      const cls = classes(state);
      const last = segments[segments.length - 1];
      if (last && last.cls === cls) last.text += clean;
      else segments.push({ text: clean, cls });
    };
    ESCAPE.lastIndex = 0;
    for (let m = ESCAPE.exec(raw); m !== null; m = ESCAPE.exec(raw)) {
      push(raw.slice(at, m.index));
      if (m[2] === 'm' && m[0].startsWith('\x1b[')) applySgr(state, m[1]);
      at = ESCAPE.lastIndex;
    }
    push(raw.slice(at));
    lines.push(segments);
  }
  return lines;
}

// Append one line's segments to `el` as spans (text only).
export function appendSegments(el, segments) {
  for (const { text, cls } of segments) {
    if (cls) {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = text;
      el.append(span);
    } else {
      el.append(document.createTextNode(text));
    }
  }
}
