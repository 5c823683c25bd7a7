// Collections and records: a collection's schema and its records, with
// sensitive fields as the API returns them ("[MASKED]" unless the user
// may read them in clear).

import { call, firmPath, can } from '../api.js';
import { h, field, page, table, notice, problemText } from '../ui.js';

export async function render(main, params) {
  const name = field('Collection', { name: 'collection', required: true, value: params.get('c') || '' },
    'The name of a collection declared through the API.');
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card narrow', 'aria-label': 'Open a collection' }, name.wrap,
    h('button', { type: 'submit', class: 'primary' }, 'Open'));
  const show = async (c) => {
    try {
      const col = await call('GET', firmPath('collections', `/${encodeURIComponent(c)}`));
      const { records } = await call('GET', firmPath('records', `/${encodeURIComponent(c)}?limit=100`));
      const fields = Object.keys((col.schema && col.schema.fields) || {});
      out.replaceChildren(
        h('p', {}, `Schema version ${col.version}. `,
          can('records:read_sensitive') ? 'Sensitive fields are shown in clear (your reads are audited).' : 'Sensitive fields are masked: you may not read them.'),
        table(`Records of ${c}`, ['Id', ...fields], records.map((r) => [r.id,
          ...fields.map((f) => {
            const v = (r.fields || r.data || {})[f];
            return v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v);
          })])));
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    show(name.input.value.trim());
  });
  page(main, 'Records', form, out);
  if (params.get('c')) await show(params.get('c'));
}
