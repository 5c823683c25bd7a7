// The audit explorer: filters, paging, an entry's details, and one-click
// verification (the server's, and the browser's own: see verify.js).

import { call, text, firmPath, session } from '../api.js';
import { h, field, page, button, table, notice, problemText } from '../ui.js';
import { verifyLog } from '../verify.js';

const PAGE = 25;

function rfc3339(local) {
  if (!local) return '';
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export async function render(main) {
  const since = field('From', { type: 'datetime-local', name: 'since', step: 1 });
  const until = field('Until (exclusive)', { type: 'datetime-local', name: 'until', step: 1 });
  const actor = field('Actor', { name: 'actor' }, 'Exact: a key id or user:usr_…');
  const action = field('Action', { name: 'action' }, 'Exact, e.g. keys.create');
  const resource = field('Resource', { name: 'resource' }, 'Exact');
  const results = h('div', { id: 'audit-results', 'aria-live': 'polite' });
  const details = h('section', { id: 'audit-details', 'aria-label': 'Entry details' });
  const verifyOut = h('section', { id: 'verify-results', 'aria-labelledby': 'verify-h' });
  let selected = null;
  const history = [];

  const query = (from) => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (from !== undefined && from !== null) q.set('from', String(from));
    for (const [k, f, conv] of [['since', since, rfc3339], ['until', until, rfc3339],
      ['actor', actor], ['action', action], ['resource', resource]]) {
      const v = conv ? conv(f.input.value) : f.input.value.trim();
      if (v) q.set(k, v);
    }
    return q;
  };

  const show = (e) => {
    selected = e.seq;
    details.replaceChildren(h('h2', { tabindex: '-1' }, `Entry ${e.seq}`),
      h('dl', { class: 'facts' }, Object.entries(e).filter(([k]) => k !== 'details')
        .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])),
      h('h3', {}, 'Details'),
      h('pre', { class: 'note' }, JSON.stringify(e.details, null, 2)),
      button(`Verify the log and this entry's inclusion`, () => runVerify(e.seq), { class: 'primary' }));
    details.querySelector('h2').focus();
  };

  const load = async (from) => {
    try {
      const r = await call('GET', `${firmPath('audit')}?${query(from)}`);
      const rows = r.entries.map((e) => [String(e.seq), e.at, e.actor, e.action, e.resource, e.outcome,
        button('Details', () => show(e), { 'aria-label': `Details of entry ${e.seq}` })]);
      const nav = h('div', { class: 'pager' },
        history.length ? button('Previous page', () => load(history.pop()), {}) : null,
        r.next !== null && r.next !== undefined ? button('Next page', () => { history.push(from ?? null); load(r.next); }) : null);
      results.replaceChildren(
        h('p', {}, `${r.entries.length} entries shown; the log holds ${r.tree_size}.`),
        table('Audit entries', ['Seq', 'Time', 'Actor', 'Action', 'Resource', 'Outcome', ''], rows), nav);
    } catch (e) {
      notice(results, problemText(e), 'error');
    }
  };

  const runVerify = async (seq) => {
    verifyOut.replaceChildren(h('h2', { id: 'verify-h' }, 'Verification'), h('p', { role: 'status' }, 'Verifying…'));
    try {
      const checks = await verifyLog(session().firm, (p) => text(p, '*/*'), seq ?? selected);
      const ok = checks.every((c) => c.ok);
      verifyOut.replaceChildren(
        h('h2', { id: 'verify-h' }, 'Verification'),
        h('p', { class: `verdict ${ok ? 'ok' : 'bad'}`, role: 'status', id: 'verdict' },
          ok ? 'Verified: the log is intact.' : 'FAILED: the log does not verify.'),
        h('ul', { class: 'checks' }, checks.map((c) => h('li', { class: c.ok ? 'ok' : 'bad' },
          h('strong', {}, c.ok ? 'Pass: ' : 'Fail: '), c.name, ' — ', c.detail))));
    } catch (e) {
      verifyOut.replaceChildren(h('h2', { id: 'verify-h' }, 'Verification'),
        h('p', { class: 'verdict bad', role: 'alert', id: 'verdict' }, `FAILED: ${problemText(e)}`));
    }
  };

  const form = h('form', { class: 'card filters', 'aria-label': 'Filter the audit log' },
    since.wrap, until.wrap, actor.wrap, action.wrap, resource.wrap,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Apply filters'),
      button('Verify the log', () => runVerify(null), { id: 'verify' })));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    history.length = 0;
    load(null);
  });
  page(main, 'Audit log', form, verifyOut, results, details);
  await load(null);
}
