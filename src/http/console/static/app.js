// The console's shell: restores the session, draws the navigation and
// routes `#/<page>` to its module.

import { call, session, setSession, lastFirm, firmPath, can } from './api.js';
import { h, button, notice, problemText } from './ui.js';

const PAGES = [
  { id: 'overview', title: 'Overview', need: 'firm:read' },
  { id: 'audit', title: 'Audit log', need: 'audit:read' },
  { id: 'keys', title: 'API keys', need: 'keys:read' },
  { id: 'users', title: 'Users', need: 'users:read' },
  { id: 'records', title: 'Records', need: 'records:read' },
  { id: 'secrets', title: 'Secrets', need: 'secrets:read' },
  { id: 'account', title: 'My account', need: 'account:self' },
];

const main = document.getElementById('main');

/// Loads the signed-in session (user, CSRF token, permissions), or null.
export async function restore(firm) {
  if (!firm) return null;
  try {
    const s = await call('GET', `/console/session/${encodeURIComponent(firm)}`);
    s.permissions = new Set(s.permissions || []);
    setSession(s);
    return s;
  } catch {
    setSession(null);
    return null;
  }
}

async function signOut() {
  try {
    await call('DELETE', `/console/session/${encodeURIComponent(session().firm)}`);
  } catch {
    // The cookie may already be gone; the page forgets the session either way.
  }
  setSession(null);
  location.hash = '#/signin';
}

function drawNav(active) {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  const s = session();
  if (!s) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(h('ul', {}, PAGES.filter((p) => can(p.need)).map((p) =>
    h('li', {}, h('a', { href: `#/${p.id}`, 'aria-current': p.id === active ? 'page' : undefined }, p.title)))));
  who.replaceChildren(
    h('span', {}, `${s.user.display_name} (${s.user.role})`),
    button('Sign out', signOut, { class: 'link' }));
}

function hashRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [id, query] = raw.split('?');
  return { id: id || '', params: new URLSearchParams(query || '') };
}

export async function route() {
  const { id, params } = hashRoute();
  if (id === 'enrol' || id === 'signin') {
    drawNav(null);
    const m = await import('./pages/signin.js');
    await (id === 'enrol' ? m.enrol(main, params) : m.signIn(main, params));
    return;
  }
  if (!session() && !(await restore(lastFirm()))) {
    location.hash = '#/signin';
    return;
  }
  if (session().mfa_enrolment_required && id !== 'account') {
    location.hash = '#/account';
    return;
  }
  const page = PAGES.find((p) => p.id === id) || PAGES.find((p) => can(p.need));
  if (!page || !can(page.need)) {
    drawNav(null);
    notice(main, 'This account may not use any page of the console.', 'error');
    return;
  }
  if (page.id !== id) {
    location.hash = `#/${page.id}`;
    return;
  }
  drawNav(page.id);
  try {
    const m = await import(`./pages/${page.id}.js`);
    await m.render(main, params);
  } catch (e) {
    if (e && e.status === 401) {
      setSession(null);
      location.hash = '#/signin';
      return;
    }
    notice(main, problemText(e), 'error');
  }
}

window.addEventListener('hashchange', route);
route();

export { firmPath };
