// Secrets: metadata only (the API never returns a value), rotate (store a
// new value), delete.

import { call, firmPath, can } from '../api.js';
import { h, field, page, button, table, notice, problemText } from '../ui.js';

export async function render(main) {
  const out = h('div', { 'aria-live': 'polite' });
  const list = h('div');
  const refresh = async () => {
    const { secrets } = await call('GET', firmPath('secrets'));
    list.replaceChildren(table('Secrets (metadata only)', ['Name', 'Version', 'Created', 'Rotated', 'Fingerprint', ''],
      secrets.map((s) => [s.name, String(s.version), s.created_at, s.rotated_at || '—', s.fingerprint,
        can('secrets:delete') ? button('Delete', async () => {
          if (!window.confirm(`Delete secret ${s.name}? It cannot be recovered.`)) return;
          try {
            await call('DELETE', firmPath('secrets', `/${encodeURIComponent(s.name)}`));
            await refresh();
          } catch (e) {
            notice(out, problemText(e), 'error');
          }
        }, { 'aria-label': `Delete secret ${s.name}`, class: 'danger' }) : ''])));
  };
  let form = null;
  if (can('secrets:write')) {
    const name = field('Name', { name: 'name', required: true, autocomplete: 'off' });
    const value = field('Value', { name: 'value', type: 'password', required: true, autocomplete: 'off' },
      'Stored sealed; never shown again. An existing name gets a new version (rotation).');
    form = h('form', { class: 'card narrow', 'aria-label': 'Store or rotate a secret' }, h('h2', {}, 'Store or rotate a secret'),
      name.wrap, value.wrap, h('button', { type: 'submit', class: 'primary' }, 'Store'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const r = await call('PUT', firmPath('secrets', `/${encodeURIComponent(name.input.value.trim())}`), { value: value.input.value });
        value.input.value = '';
        await refresh();
        notice(out, `Secret ${r.name} stored (version ${r.version}).`, 'ok');
      } catch (e) {
        notice(out, problemText(e), 'error');
      }
    });
  }
  page(main, 'Secrets', form, out, list);
  await refresh();
}
