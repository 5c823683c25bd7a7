// Sign-in (password and TOTP code) and enrolment from an invitation.

import { call, setSession, lastFirm } from '../api.js';
import { h, field, page, notice, problemText, secretBox } from '../ui.js';
import { restore } from '../app.js';

export async function signIn(main, params) {
  const firm = field('Firm ID', { name: 'firm', required: true, autocomplete: 'organization', value: params.get('firm') || lastFirm() });
  const login = field('Login', { name: 'login', required: true, autocomplete: 'username' });
  const password = field('Password', { name: 'password', type: 'password', required: true, autocomplete: 'current-password' });
  const code = field('Authentication code', { name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code' },
    'The six digits from your authenticator app, or a recovery code.');
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card narrow', 'aria-label': 'Sign in' },
    firm.wrap, login.wrap, password.wrap, code.wrap,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'), out,
    h('p', {}, 'Invited? ', h('a', { href: `#/enrol?firm=${encodeURIComponent(firm.input.value)}` }, 'Set up your account')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = firm.input.value.trim();
    try {
      const body = { login: login.input.value, password: password.input.value };
      if (code.input.value.trim()) body.code = code.input.value.trim();
      await call('POST', `/console/session/${encodeURIComponent(f)}`, body);
      password.input.value = '';
      setSession(null);
      if (!(await restore(f))) throw new Error('signed in, but the session could not be loaded');
      location.hash = '#/overview';
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  });
  page(main, 'Sign in to the Strongroom console', form);
}

export async function enrol(main, params) {
  const firm = field('Firm ID', { name: 'firm', required: true, value: params.get('firm') || lastFirm() });
  const token = field('Enrolment token', { name: 'token', required: true, autocomplete: 'off', value: params.get('token') || '' },
    'From your invitation (sre_…).');
  const password = field('New password', { name: 'new-password', type: 'password', required: true, autocomplete: 'new-password', minlength: 12 },
    'At least 12 characters; not a common password and not your login.');
  const out = h('div', { 'aria-live': 'polite' });
  const step2 = h('div');
  const form = h('form', { class: 'card narrow', 'aria-label': 'Set your password' },
    firm.wrap, token.wrap, password.wrap, h('button', { type: 'submit', class: 'primary' }, 'Set password'), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = firm.input.value.trim();
    try {
      const t = await call('POST', `/api/v1/enrolment/${encodeURIComponent(f)}`,
        { token: token.input.value.trim(), password: password.input.value });
      password.input.value = '';
      notice(out, 'Password set. Now add the account to your authenticator app.', 'ok');
      confirmStep(step2, f, token.input.value.trim(), t);
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  });
  page(main, 'Set up your account', form, step2);
}

function confirmStep(el, firm, token, t) {
  const img = h('img', { src: `data:image/svg+xml;base64,${btoa(t.qr_svg)}`, alt: 'QR code of the authenticator set-up link', class: 'qr', width: 200, height: 200 });
  const code = field('Code from the app', { name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', required: true });
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card narrow', 'aria-label': 'Confirm your authenticator' },
    h('h2', {}, 'Scan the QR code'), img,
    h('p', {}, 'Or type this key into the app: ', h('code', { class: 'secret', id: 'totp-secret' }, t.secret)),
    code.wrap, h('button', { type: 'submit', class: 'primary' }, 'Confirm'), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const e = await call('POST', `/api/v1/enrolment/${encodeURIComponent(firm)}/confirm`, { token, code: code.input.value.trim() });
      el.replaceChildren(h('div', { class: 'card narrow' },
        h('h2', { tabindex: '-1' }, 'Your account is ready'),
        secretBox('Recovery codes', e.recovery_codes.join('\n')),
        h('p', {}, 'Each works once in place of a code if you lose your device. Keep them somewhere safe.'),
        h('p', {}, h('a', { href: `#/signin?firm=${encodeURIComponent(firm)}` }, 'Continue to sign in'))));
      el.querySelector('h2').focus();
    } catch (e) {
      notice(out, problemText(e), 'error');
    }
  });
  el.replaceChildren(form);
  code.input.focus();
}
