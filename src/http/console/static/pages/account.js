// The signed-in user's own account: sessions, password, and TOTP
// enrolment when the firm requires it and the user has none.

import { call, firmPath, session } from '../api.js';
import { h, field, page, button, table, notice, problemText, secretBox } from '../ui.js';
import { restore } from '../app.js';

export async function render(main) {
  const out = h('div', { 'aria-live': 'polite' });
  const list = h('div');
  const refresh = async () => {
    if (session().mfa_enrolment_required) return;
    const { sessions } = await call('GET', firmPath('sessions'));
    list.replaceChildren(table('My sessions', ['Id', 'Started', 'Last seen', 'Expires', 'From', ''],
      sessions.map((s) => [s.id + (s.current ? ' (this one)' : ''), s.created_at, s.last_seen_at, s.expires_at, s.source_ip,
        s.current ? '' : button('End', async () => {
          try {
            await call('DELETE', firmPath('sessions', `/${s.id}`));
            await refresh();
          } catch (e) {
            notice(out, problemText(e), 'error');
          }
        }, { 'aria-label': `End session ${s.id}` })])));
  };
  const current = field('Current password', { type: 'password', name: 'current', required: true, autocomplete: 'current-password' });
  const next = field('New password', { type: 'password', name: 'new', required: true, autocomplete: 'new-password', minlength: 12 },
    'At least 12 characters. Your other sessions end.');
  const pw = h('form', { class: 'card narrow', 'aria-label': 'Change my password' }, h('h2', {}, 'Change my password'),
    current.wrap, next.wrap, h('button', { type: 'submit', class: 'primary' }, 'Change password'));
  pw.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call('POST', firmPath('me', '/password'), { current_password: current.input.value, new_password: next.input.value });
      current.input.value = '';
      next.input.value = '';
      notice(out, 'Password changed; your other sessions have ended.', 'ok');
      await refresh();
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  });
  let totp = null;
  if (session().mfa_enrolment_required) {
    totp = h('section', { class: 'card narrow' }, h('h2', {}, 'Set up two-factor authentication'),
      h('p', {}, 'Your firm requires an authenticator app before you can use the console.'),
      button('Start', async (ev) => {
        try {
          const t = await call('POST', firmPath('me', '/totp'));
          ev.target.disabled = true;
          const code = field('Code from the app', { inputmode: 'numeric', autocomplete: 'one-time-code' });
          const f = h('form', { 'aria-label': 'Confirm the authenticator' },
            h('img', { src: `data:image/svg+xml;base64,${btoa(t.qr_svg)}`, alt: 'QR code of the authenticator set-up link', class: 'qr', width: 200, height: 200 }),
            h('p', {}, 'Key: ', h('code', { class: 'secret', id: 'totp-secret' }, t.secret)), code.wrap,
            h('button', { type: 'submit', class: 'primary' }, 'Confirm'));
          f.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            try {
              const r = await call('POST', firmPath('me', '/totp/confirm'), { code: code.input.value.trim() });
              // The session may now do what the user's role allows.
              await restore(session().firm);
              totp.replaceChildren(h('h2', { tabindex: '-1' }, 'Two-factor authentication is on'),
                secretBox('Recovery codes', r.recovery_codes.join('\n')),
                h('p', {}, h('a', { href: '#/overview' }, 'Continue to the console')));
              totp.querySelector('h2').focus();
            } catch (e) {
              notice(out, problemText(e), 'error');
            }
          });
          totp.append(f);
        } catch (e) {
          notice(out, problemText(e), 'error');
        }
      }));
  }
  page(main, 'My account', h('p', {}, `Signed in as ${session().user.login} (${session().user.role}).`), totp, out, list, pw);
  await refresh();
}
