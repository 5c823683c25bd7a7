// API keys: list, mint (the secret shown once, with a copy button), rotate, revoke.

import { call, firmPath, can } from '../api.js';
import { h, field, select, page, button, table, notice, problemText, secretBox } from '../ui.js';

export async function render(main) {
  const out = h('div', { id: 'key-result', 'aria-live': 'polite' });
  const list = h('div');
  const refresh = async () => {
    const { keys } = await call('GET', firmPath('keys'));
    list.replaceChildren(table('API keys', ['Name', 'Id', 'Role', 'State', 'Created', 'Expires', 'Last used', ''],
      keys.map((k) => [k.name, k.id, k.role, k.state, k.created_at, k.expires_at || '—', k.last_used_at || '—',
        k.state === 'active' ? h('div', { class: 'row-actions' },
          can('keys:rotate') ? button('Rotate', () => act('rotate', k), { 'aria-label': `Rotate key ${k.name}` }) : null,
          can('keys:revoke') ? button('Revoke', () => act('revoke', k), { 'aria-label': `Revoke key ${k.name}`, class: 'danger' }) : null) : '',
      ])));
  };
  const act = async (what, k) => {
    if (!window.confirm(`${what === 'rotate' ? 'Rotate' : 'Revoke'} key ${k.name}? Its current secret stops working at once.`)) return;
    try {
      if (what === 'rotate') {
        const r = await call('POST', firmPath('keys', `/${k.id}/rotate`));
        out.replaceChildren(secretBox(`New secret of ${r.name || k.name}`, r.secret));
      } else {
        await call('DELETE', firmPath('keys', `/${k.id}`));
      }
      await refresh();
      if (what !== 'rotate') notice(out, `Key ${k.name} revoked.`, 'ok');
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  };
  let mint = null;
  if (can('keys:create')) {
    const name = field('Name', { name: 'name', required: true });
    const role = select('Role', ['viewer', 'operator', 'admin', 'owner'], 'viewer');
    const expires = field('Expires (optional)', { type: 'datetime-local', name: 'expires' });
    mint = h('form', { class: 'card', 'aria-label': 'Mint a key' }, h('h2', {}, 'Mint a key'),
      name.wrap, role.wrap, expires.wrap, h('button', { type: 'submit', class: 'primary' }, 'Mint key'));
    mint.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const body = { name: name.input.value.trim(), role: role.input.value };
        if (expires.input.value) body.expires_at = new Date(expires.input.value).toISOString();
        const r = await call('POST', firmPath('keys'), body);
        out.replaceChildren(secretBox(`Secret of key ${r.name}`, r.secret));
        name.input.value = '';
        await refresh();
      } catch (e) {
        notice(out, problemText(e), 'error');
      }
    });
  }
  page(main, 'API keys', mint, out, list);
  await refresh();
}
