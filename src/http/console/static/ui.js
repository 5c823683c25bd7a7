// Small DOM helpers: elements are built with text nodes only, never from
// HTML strings, so nothing the server returns can become markup.

let uid = 0;

/// h('p', { class: 'x' }, 'text', child, ...): attributes starting with `on`
/// are event listeners; everything else is an attribute.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/// A labelled input: returns { wrap, input }.
export function field(label, attrs = {}, hint) {
  const id = `f${++uid}`;
  const hintId = hint ? `${id}-hint` : undefined;
  const input = h(attrs.tag || 'input', { id, 'aria-describedby': hintId, ...attrs, tag: undefined });
  const wrap = h('div', { class: 'field' },
    h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: hintId }, hint) : null);
  return { wrap, input };
}

export function select(label, options, value) {
  const id = `f${++uid}`;
  const input = h('select', { id }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
  return { wrap: h('div', { class: 'field' }, h('label', { for: id }, label), input), input };
}

export function button(text, onclick, attrs = {}) {
  return h('button', { type: 'button', onclick, ...attrs }, text);
}

/// A table with a caption; `rows` are arrays of cells (strings or nodes).
export function table(caption, headers, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c)))))));
}

/// Shows a message to everyone, screen readers included.
export function notice(el, text, kind = 'info') {
  el.replaceChildren(h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text));
}

export function problemText(e) {
  if (e && e.problem) return `${e.problem.detail || e.message} (${e.problem.code || e.status})`;
  return String(e && e.message ? e.message : e);
}

/// A page's heading, focused so keyboard and screen-reader users land on it.
export function page(main, title, ...children) {
  const h1 = h('h1', { tabindex: '-1' }, title);
  main.replaceChildren(h1, ...children);
  document.title = `${title} · Strongroom console`;
  h1.focus();
  return h1;
}

/// A value shown once, with a copy button.
export function secretBox(label, value) {
  const id = `s${++uid}`;
  const out = h('output', { id, class: 'secret' }, value);
  const status = h('span', { role: 'status', class: 'copied' });
  return h('div', { class: 'once' },
    h('p', {}, h('strong', {}, label), ' (shown once: copy it now)'),
    out,
    button('Copy', async () => {
      try {
        await navigator.clipboard.writeText(value);
        status.textContent = 'Copied.';
      } catch {
        status.textContent = 'Select the text and copy it by hand.';
      }
    }, { 'aria-controls': id }),
    status);
}
