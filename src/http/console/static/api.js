// The console's calls to the daemon: the same /api/v1 routes as any
// client. The session rides in an HttpOnly cookie the page cannot read;
// every state-changing request carries the session's CSRF token.

let current = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function session() {
  return current;
}

export function setSession(s) {
  current = s;
  if (s) sessionStorage.setItem('strongroom.firm', s.firm);
}

export function lastFirm() {
  return sessionStorage.getItem('strongroom.firm') || '';
}

async function send(method, path, body, accept) {
  const headers = { accept: accept || 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && current) headers['x-csrf-token'] = current.csrf_token;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (!r.ok) {
    let problem;
    try {
      problem = await r.json();
    } catch {
      problem = { code: `http_${r.status}`, detail: r.statusText };
    }
    throw new ApiError(r.status, problem);
  }
  return r;
}

export async function call(method, path, body) {
  const r = await send(method, path, body);
  if (r.status === 204) return null;
  return r.json();
}

export async function text(path, accept) {
  return (await send('GET', path, undefined, accept || 'text/plain')).text();
}

/// `/api/v1/<resource>/<firm><rest>` for the signed-in firm.
export function firmPath(resource, rest = '') {
  return `/api/v1/${resource}/${encodeURIComponent(current.firm)}${rest}`;
}

export function can(permission) {
  return current !== null && current.permissions.has(permission);
}
