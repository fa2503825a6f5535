// The signed-in session: its token (shared with the GraphiQL playground,
// under the same key), the viewer and permissions (loaded once, cached), and
// the timer that keeps the session alive with `refreshSession`.

import { gql } from './api.js';

const TOKEN_KEY = 'modelfleet.token';
const CACHE_KEY = 'modelfleet.console.viewer';
const VIEWER = 'id sessionId authType username email roles permissions sessionExpiresAt';
// setTimeout takes at most 2^31 - 1 ms.
const LONGEST_WAIT_MS = 2_147_000_000;

let token = null;
let viewer = null;
let lifetimeMs = null;
let refreshTimer = null;
let listeners = new Set();
let endedMessage = null;

function read(key) {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

function write(key, value) {
  try {
    if (value === null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch {
    // Storage may be disabled; the session then lasts as long as the page.
  }
}

function save() {
  write(TOKEN_KEY, token);
  write(CACHE_KEY, token && viewer ? JSON.stringify({ token, viewer, lifetimeMs }) : null);
}

function changed() {
  listeners.forEach((l) => l(viewer));
}

/** The bearer token, or null when signed out. */
export function currentToken() {
  return token;
}

/** Who is signed in (as `me` answered), or null. */
export function currentViewer() {
  return viewer;
}

/** Whether the viewer's roles grant `permission`. */
export function can(permission) {
  return Boolean(viewer && viewer.permissions.includes(permission));
}

/** Calls `listener(viewer)` after every sign-in, sign-out and refresh. */
export function onChange(listener) {
  listeners.add(listener);
}

/** Why the last session ended, shown on the sign-in page until the next sign-in. */
export function endedReason() {
  return endedMessage;
}

function adopt(payloadViewer, expiresAt, fresh) {
  viewer = { ...payloadViewer, sessionExpiresAt: expiresAt || payloadViewer.sessionExpiresAt };
  if (fresh) lifetimeMs = Date.parse(viewer.sessionExpiresAt) - Date.now();
  save();
  schedule();
  changed();
}

/**
 * Picks up a stored session at start-up. The cached viewer shows at once;
 * `me` then confirms it. A server that cannot be reached leaves the cached
 * viewer in place: only the server saying the session is gone ends it.
 */
export async function restore() {
  token = read(TOKEN_KEY);
  if (!token) return;
  try {
    const cached = JSON.parse(read(CACHE_KEY) || 'null');
    if (cached && cached.token === token) {
      viewer = cached.viewer;
      lifetimeMs = cached.lifetimeMs;
    }
  } catch {
    viewer = null;
  }
  try {
    const data = await gql(`query Viewer { me { ${VIEWER} } }`);
    if (data.me) adopt(data.me, null, false);
  } catch (error) {
    if (!error.sessionEnded && viewer) {
      schedule();
      return;
    }
    if (!error.sessionEnded) throw error;
  }
}

export async function signIn(login, password) {
  const data = await gql(
    `mutation SignIn($input: LoginInput!) { login(input: $input) { token expiresAt viewer { ${VIEWER} } } }`,
    { input: { login, password } },
    { auth: false },
  );
  token = data.login.token;
  endedMessage = null;
  adopt(data.login.viewer, data.login.expiresAt, true);
  return viewer;
}

export async function signOut() {
  try {
    if (token) await gql('mutation SignOut { logout }');
  } finally {
    end(null);
  }
}

/** Forgets the session; `message` says why on the sign-in page. */
export function end(message) {
  if (message) endedMessage = message;
  clearTimeout(refreshTimer);
  token = null;
  viewer = null;
  lifetimeMs = null;
  save();
  changed();
}

/** Extends the session to a full lifetime from now. */
export async function refresh() {
  if (!token) return;
  const data = await gql(`mutation Refresh { refreshSession { expiresAt viewer { ${VIEWER} } } }`);
  adopt(data.refreshSession.viewer, data.refreshSession.expiresAt, true);
}

/** When to refresh: halfway through the session's lifetime. */
function refreshDue() {
  const expires = Date.parse(viewer.sessionExpiresAt);
  const half = lifetimeMs ? lifetimeMs / 2 : (expires - Date.now()) / 2;
  return expires - half;
}

function schedule() {
  clearTimeout(refreshTimer);
  if (!token || !viewer) return;
  const wait = Math.max(1000, Math.min(LONGEST_WAIT_MS, refreshDue() - Date.now()));
  refreshTimer = setTimeout(refreshNow, wait);
}

async function refreshNow() {
  try {
    await refresh();
  } catch (error) {
    // A session that ended is handled by the API layer; anything else
    // (the server restarting, say) is tried again shortly.
    if (!error.sessionEnded) refreshTimer = setTimeout(refreshNow, 15_000);
  }
}

// Timers sleep with the machine and in hidden tabs: catch up when the page
// is looked at again.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && token && viewer && Date.now() >= refreshDue()) {
    refreshNow();
  }
});

// Another tab (or the playground) signed in or out.
window.addEventListener('storage', (event) => {
  if (event.key !== TOKEN_KEY || event.newValue === token) return;
  if (!event.newValue) {
    end('You signed out in another tab.');
    return;
  }
  token = event.newValue;
  viewer = null;
  restore().then(changed, changed);
});
