// The console end to end in Debian's chromium, driven by playwright-core.
// Run by tests/it/console.rs, which starts the daemon and answers this
// script's questions on stdin ("ASK totp <secret>": a code on the daemon's
// clock; "ASK tamper": edit an audit entry in the firm's database).
// Prints "LOG ..." lines, and "DONE" when every check passed.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const env = process.env;
const base = env.CONSOLE_BASE;
const firm = env.CONSOLE_FIRM;
const shots = env.CONSOLE_SHOTS;
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
async function ask(q) {
  console.log(`ASK ${q}`);
  const { value } = await lines.next();
  return (value || '').trim();
}
const log = (m) => console.log(`LOG ${m}`);
function check(ok, msg) {
  if (!ok) throw new Error(msg);
}

const browser = await chromium.launch({
  executablePath: env.CONSOLE_CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const failures = [];
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  // Reported by the page itself: any content-security-policy violation.
  await context.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) failures.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => failures.push(`page error: ${e}`));
  page.on('dialog', (d) => d.accept());
  const csp = new Set();
  page.on('response', (r) => {
    if (new URL(r.url()).pathname.startsWith('/console')) {
      const h = r.headers()['content-security-policy'] || '';
      if (!h.includes("script-src 'self'") || !h.includes("default-src 'self'") || !h.includes("frame-ancestors 'none'")) {
        failures.push(`no console CSP on ${r.url()}: ${h}`);
      }
      csp.add(h);
    }
  });

  const axe = async (name) => {
    await page.evaluate(axeSource);
    const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    check(bad.length === 0, `axe on ${name}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`).join('; ')}`);
    log(`axe: ${name}: no serious or critical violations (${r.violations.length} minor)`);
  };
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const heading = (name) => page.getByRole('heading', { level: 1, name }).waitFor();

  // Enrolment from the invitation: password, QR code, a code, recovery codes.
  await page.goto(`${base}/console/#/enrol?firm=${firm}&token=${env.CONSOLE_TOKEN}`);
  await heading('Set up your account');
  await page.getByLabel('New password').fill(env.CONSOLE_PASSWORD);
  await page.getByRole('button', { name: 'Set password' }).click();
  await page.getByRole('img', { name: /QR code/ }).waitFor();
  const secret = (await page.locator('#totp-secret').textContent()).trim();
  check(/^[A-Z2-7]+=*$/.test(secret), `TOTP secret ${secret}`);
  await axe('enrolment');
  await shot('enrolment');
  await page.getByLabel('Code from the app').fill(await ask(`totp ${secret}`));
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('heading', { name: 'Your account is ready' }).waitFor();
  const codes = (await page.locator('.once output').textContent()).trim().split('\n');
  check(codes.length === 10, `recovery codes: ${codes.length}`);
  log('enrolled');

  // Sign in with a TOTP code.
  await page.getByRole('link', { name: 'Continue to sign in' }).click();
  await heading('Sign in to the Strongroom console');
  await axe('sign-in');
  await shot('sign-in');
  await page.getByLabel('Login').fill(env.CONSOLE_LOGIN);
  await page.getByLabel('Password').fill(env.CONSOLE_PASSWORD);
  await page.getByLabel('Authentication code').fill(await ask(`totp ${secret}`));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await heading('Overview');
  await page.getByText('FIPS mode').waitFor();
  const cookies = await context.cookies();
  const c = cookies.find((k) => k.name === '__Host-strongroom-session');
  check(c && c.httpOnly && c.secure && c.sameSite === 'Strict' && c.path === '/', `cookie ${JSON.stringify(c && { ...c, value: '…' })}`);
  check(!(await page.evaluate(() => document.cookie)).includes('strongroom'), 'the page can read the session cookie');
  await axe('overview');
  await shot('overview');
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('overview-narrow');
  await page.setViewportSize({ width: 1280, height: 900 });
  log('signed in');

  // The audit explorer: filters and paging.
  await page.getByRole('link', { name: 'Audit log' }).click();
  await heading('Audit log');
  await page.getByRole('table', { name: 'Audit entries' }).waitFor();
  await axe('audit log');
  const actions = async () => page.locator('#audit-results tbody tr td:nth-child(4)').allTextContents();
  await page.getByLabel('Action').fill('keys.create');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.waitForFunction(() => [...document.querySelectorAll('#audit-results tbody tr td:nth-child(4)')]
    .every((td) => td.textContent === 'keys.create'));
  const keyRows = await actions();
  check(keyRows.length === 1, `keys.create rows: ${keyRows}`);
  await page.getByLabel('Action').fill('');
  await page.getByLabel('Actor').fill('nobody-at-all');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.getByText('0 entries shown').waitFor();
  await page.getByLabel('Actor').fill('');
  await page.getByLabel('From').fill('2000-01-01T00:00');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.getByRole('button', { name: /Details of entry 0/ }).click();
  await page.getByRole('heading', { name: 'Entry 0' }).waitFor();
  log(`explorer: filters work (${(await actions()).length} entries on the first page)`);

  // One click: the server's verification and the browser's own.
  await page.getByRole('button', { name: 'Verify the log', exact: true }).click();
  await page.locator('#verdict').waitFor();
  const verdict = await page.locator('#verdict').textContent();
  const checks = await page.locator('#verify-results li').allTextContents();
  check(verdict.startsWith('Verified'), `verify: ${verdict}\n${checks.join('\n')}`);
  for (const want of ['Checkpoint signature (Ed25519', 'Merkle tree root equals', 'Inclusion proof of entry', 'leaf hash and the hash chain']) {
    check(checks.some((t) => t.startsWith('Pass') && t.includes(want)), `no passing check "${want}": ${checks.join('\n')}`);
  }
  await shot('audit-verified');
  log('verify passes');

  // Keys: mint, the secret shown once with a copy button.
  await page.getByRole('link', { name: 'API keys' }).click();
  await heading('API keys');
  await page.getByLabel('Name').fill('console-minted');
  await page.getByRole('button', { name: 'Mint key' }).click();
  await page.locator('#key-result output').waitFor();
  const minted = (await page.locator('#key-result output').textContent()).trim();
  check(minted.startsWith('sr_'), `minted ${minted}`);
  check(await page.getByRole('button', { name: 'Copy' }).isVisible(), 'no copy button');
  await axe('keys');
  await shot('keys');
  await page.getByRole('link', { name: 'Overview' }).click();
  await heading('Overview');
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.getByRole('table', { name: 'API keys' }).waitFor();
  check(!(await page.content()).includes(minted), 'the minted secret is shown again');
  log('key minted; its secret shown once');

  // A state-changing request without the CSRF token is refused.
  const refused = await page.evaluate(async (f) => {
    const r = await fetch(`/api/v1/keys/${f}`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'forged', role: 'viewer' }),
    });
    return [r.status, (await r.json()).code];
  }, firm);
  check(refused[0] === 403 && refused[1] === 'csrf_failed', `without CSRF: ${refused}`);
  log('a request without the CSRF token is refused');

  // Rotate one key (a new secret, shown once) and revoke another.
  await page.getByRole('button', { name: 'Rotate key ledger sync' }).click();
  await page.getByText('New secret of').waitFor();
  const rotated = (await page.locator('#key-result output').textContent()).trim();
  check(rotated.startsWith('sr_') && rotated !== minted, `rotated ${rotated}`);
  await page.getByRole('button', { name: 'Revoke key console-minted' }).click();
  await page.getByText('Key console-minted revoked.').waitFor();
  const revokedRow = await page.getByRole('row', { name: /console-minted/ }).textContent();
  check(revokedRow.includes('revoked'), `after revoking: ${revokedRow}`);
  log('keys rotated and revoked');

  // Users: invite (the enrolment token shown once), then disable.
  await page.getByRole('link', { name: 'Users', exact: true }).click();
  await heading('Users');
  await page.getByLabel('Login').fill('vera@example.test');
  await page.getByLabel('Display name').fill('Vera Viewer');
  await page.getByRole('button', { name: 'Invite' }).click();
  await page.locator('#user-result output').waitFor();
  check((await page.locator('#user-result output').textContent()).startsWith('sre_'), 'no enrolment token');
  await axe('users');
  await shot('users');
  await page.getByRole('button', { name: 'Disable vera@example.test' }).click();
  await page.getByText('vera@example.test: disable done.').waitFor();
  check((await page.getByRole('row', { name: /vera@example.test/ }).textContent()).includes('disabled'), 'not disabled');
  log('user invited and disabled');

  // Secrets: store one; its value is never shown.
  await page.getByRole('link', { name: 'Secrets', exact: true }).click();
  await heading('Secrets');
  await page.getByLabel('Name').fill('webhook-signing');
  await page.getByLabel('Value').fill('never-shown-value-81');
  await page.getByRole('button', { name: 'Store' }).click();
  await page.getByText('Secret webhook-signing stored (version 1).').waitFor();
  check(!(await page.content()).includes('never-shown-value-81'), 'a secret value is on the page');
  check(!(await page.content()).includes('s3cret-smtp'), 'a secret value is on the page');
  await axe('secrets');
  await shot('secrets');

  // Records: sensitive fields masked for a user without records:read_sensitive.
  await page.getByRole('link', { name: 'Records', exact: true }).click();
  await heading('Records');
  await page.getByLabel('Collection', { exact: true }).fill('clients');
  await page.getByRole('button', { name: 'Open' }).click();
  await page.getByRole('table', { name: 'Records of clients' }).waitFor();
  const cells = await page.locator('table tbody td').allTextContents();
  check(cells.includes('Ada Lovelace') && cells.includes('[MASKED]') && !cells.includes('078-05-1120'), `record cells: ${cells}`);
  await page.getByText('Sensitive fields are masked').waitFor();
  await axe('records');
  await shot('records');
  log('records: sensitive fields masked');

  await page.getByRole('link', { name: 'My account', exact: true }).click();
  await heading('My account');
  await page.getByRole('table', { name: 'My sessions' }).waitFor();
  await axe('account');
  await shot('account');

  // Tamper with an entry in the firm's database: the browser names it.
  const seq = await ask('tamper');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await heading('Audit log');
  await page.getByRole('button', { name: 'Verify the log', exact: true }).click();
  await page.locator('#verdict').waitFor();
  const failed = await page.locator('#verdict').textContent();
  const found = await page.locator('#verify-results li').allTextContents();
  check(failed.startsWith('FAILED'), `after tampering: ${failed}`);
  check(found.some((t) => t.startsWith('Fail') && t.includes(`entry ${seq} `) && t.includes('in this browser')),
    `the browser does not name entry ${seq}: ${found.join('\n')}`);
  await shot('audit-tampered');
  log(`verify fails and names entry ${seq}`);

  // Sign out: the session is revoked server-side.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await heading('Sign in to the Strongroom console');
  const after = await page.evaluate(async (f) => (await fetch(`/console/session/${f}`)).status, firm);
  check(after === 401, `after sign-out: ${after}`);
  check(!(await context.cookies()).some((k) => k.name === '__Host-strongroom-session'), 'cookie kept');

  // A user whose firm requires TOTP and who has none: the session may
  // only enrol it, then may do what the role allows.
  await page.getByLabel('Login').fill(env.CONSOLE_MFA_LOGIN);
  await page.getByLabel('Password').fill(env.CONSOLE_MFA_PASSWORD);
  await page.getByLabel('Authentication code').fill('');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await heading('My account');
  check(!(await page.getByRole('link', { name: 'Audit log' }).isVisible()), 'an enrolment-only session sees the audit log');
  await page.getByRole('button', { name: 'Start' }).click();
  const mfaSecret = (await page.locator('#totp-secret').textContent()).trim();
  await page.getByLabel('Code from the app').fill(await ask(`totp ${mfaSecret}`));
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('heading', { name: 'Two-factor authentication is on' }).waitFor();
  await page.getByRole('link', { name: 'Continue to the console' }).click();
  await heading('Overview');
  check(await page.getByRole('link', { name: 'Audit log' }).isVisible(), 'no audit log after enrolling TOTP');
  log('an enrolment-only session enrols TOTP, then may act');

  // One's own password.
  await page.getByRole('link', { name: 'My account', exact: true }).click();
  await heading('My account');
  await page.getByLabel('Current password').fill(env.CONSOLE_MFA_PASSWORD);
  await page.getByLabel('New password').fill('Marble harbour violet 27');
  await page.getByRole('button', { name: 'Change password' }).click();
  await page.getByText('Password changed; your other sessions have ended.').waitFor();
  log('password changed');

  const violations = await page.evaluate(() => window.cspViolations);
  check(violations.length === 0, `CSP violations: ${violations}`);
  check(csp.size === 1, `console CSPs: ${[...csp]}`);
  check(failures.length === 0, failures.join('\n'));
  log('no CSP violation');
  console.log('DONE');
} finally {
  await browser.close();
  rl.close();
}
