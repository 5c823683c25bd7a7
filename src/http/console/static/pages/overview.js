// The firm at a glance: its state, the appliance's FIPS mode, counts, and
// the audit log's size and latest signed checkpoint.

import { call, text, firmPath, can } from '../api.js';
import { h, page, problemText } from '../ui.js';

async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    return { error: problemText(e) };
  }
}

function row(term, value) {
  return [h('dt', {}, term), h('dd', {}, value)];
}

export async function render(main) {
  const [firm, status] = await Promise.all([call('GET', firmPath('firms')), call('GET', '/status')]);
  const count = async (perm, res, key) => (can(perm)
    ? attempt(async () => String((await call('GET', firmPath(res)))[key].length))
    : 'not permitted');
  const [users, keys, secrets] = await Promise.all([
    count('users:read', 'users', 'users'), count('keys:read', 'keys', 'keys'), count('secrets:read', 'secrets', 'secrets')]);
  let auditSize = 'not permitted';
  let checkpoint = null;
  if (can('audit:read')) {
    auditSize = await attempt(async () => String((await call('GET', firmPath('audit', '?limit=1'))).tree_size));
    checkpoint = await attempt(() => text(firmPath('audit', '/checkpoint')));
  }
  const shown = (v) => (v && v.error ? `unavailable: ${v.error}` : v);
  page(main, 'Overview',
    h('dl', { class: 'facts card' },
      row('Firm', `${firm.name} (${firm.id})`),
      row('State', firm.state),
      row('Created', firm.created_at),
      row('FIPS mode', status.fips ? `on (${status.crypto_module})` : 'OFF'),
      row('Appliance version', status.version),
      row('Users', shown(users)),
      row('API keys', shown(keys)),
      row('Secrets', shown(secrets)),
      row('Audit log entries', shown(auditSize))),
    checkpoint === null ? null : h('section', { class: 'card', 'aria-labelledby': 'cp-h' },
      h('h2', { id: 'cp-h' }, 'Latest signed checkpoint'),
      h('pre', { class: 'note' }, shown(checkpoint))));
}
