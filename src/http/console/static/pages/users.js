// Users: invite, disable or enable, unlock, reset MFA, end sessions.

import { call, firmPath, can, session } from '../api.js';
import { h, field, select, page, button, table, notice, problemText, secretBox } from '../ui.js';

export async function render(main) {
  const out = h('div', { id: 'user-result', 'aria-live': 'polite' });
  const list = h('div');
  const refresh = async () => {
    const { users } = await call('GET', firmPath('users'));
    list.replaceChildren(table('Users', ['Name', 'Login', 'Role', 'State', 'MFA', 'Last sign-in', ''],
      users.map((u) => [u.display_name, u.login, u.role, u.state, u.mfa_enrolled ? 'yes' : 'no', u.last_signin_at || '—',
        can('users:update') && u.id !== session().user.id ? h('div', { class: 'row-actions' },
          u.state === 'disabled'
            ? button('Enable', () => act(u, 'enable'), { 'aria-label': `Enable ${u.login}` })
            : button('Disable', () => act(u, 'disable'), { 'aria-label': `Disable ${u.login}` }),
          u.state === 'locked' ? button('Unlock', () => act(u, 'unlock'), { 'aria-label': `Unlock ${u.login}` }) : null,
          u.mfa_enrolled ? button('Reset MFA', () => act(u, 'reset-mfa'), { 'aria-label': `Reset MFA of ${u.login}`, class: 'danger' }) : null)
          : '',
      ])));
  };
  const act = async (u, what) => {
    if (!window.confirm(`${what} ${u.login}?`)) return;
    try {
      await call('POST', firmPath('users', `/${u.id}/${what}`));
      await refresh();
      notice(out, `${u.login}: ${what} done.`, 'ok');
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  };
  let invite = null;
  if (can('users:invite')) {
    const login = field('Login', { name: 'login', required: true, autocomplete: 'off' }, 'Usually an email address.');
    const name = field('Display name', { name: 'display_name', required: true, autocomplete: 'off' });
    const role = select('Role', ['viewer', 'operator', 'admin', 'owner'], 'viewer');
    invite = h('form', { class: 'card', 'aria-label': 'Invite a user' }, h('h2', {}, 'Invite a user'),
      login.wrap, name.wrap, role.wrap, h('button', { type: 'submit', class: 'primary' }, 'Invite'));
    invite.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const r = await call('POST', firmPath('users'),
          { login: login.input.value.trim(), display_name: name.input.value.trim(), role: role.input.value });
        const link = `${location.origin}/console/#/enrol?firm=${encodeURIComponent(session().firm)}`;
        out.replaceChildren(secretBox(`Enrolment token for ${r.user.login} (until ${r.expires_at})`, r.enrolment_token),
          h('p', {}, `Send it to them with the console's address: ${link}`));
        login.input.value = '';
        name.input.value = '';
        await refresh();
      } catch (e) {
        notice(out, problemText(e), 'error');
      }
    });
  }
  page(main, 'Users', invite, out, list);
  await refresh();
}
