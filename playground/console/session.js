// The signed-in session: its token, the viewer and permissions (loaded
// once, cached with the token), and the timer that keeps the session alive
// with `refreshSession`.
//
// The console keeps its token under a key of its own. On sign-in it also
// hands the token to the GraphiQL playground (under the playground's key),
// so the playground opened from the console acts as the same admin; what
// the playground later does with its own key (an anonymous session, say)
// does not change the console's session.

import { gql, serverNow } from './api.js';

const TOKEN_KEY = 'modelfleet.console.token';
const CACHE_KEY = 'modelfleet.console.viewer';
const PLAYGROUND_KEY = 'modelfleet.token';
const VIEWER = 'id sessionId authType username email roles permissions sessionExpiresAt';
// setTimeout takes at most 2^31 - 1 ms; and never refresh more often than this.
const LONGEST_WAIT_MS = 2_147_000_000;
const SHORTEST_WAIT_MS = 5000;

let token = null;
let viewer = null;
let lifetimeMs = null;
let refreshTimer = null;
const listeners = new Set();
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
  // Measured against the server's clock: the browser's may be off.
  if (fresh) lifetimeMs = Date.parse(viewer.sessionExpiresAt) - serverNow();
  save();
  schedule();
  changed();
}

/**
 * Asks `me` who the token belongs to. A server that cannot be reached
 * leaves the cached viewer in place: only the server saying the session is
 * gone ends it (through the API layer).
 */
export async function verify() {
  if (!token) return;
  const asked = token;
  try {
    const data = await gql(`query Viewer { me { ${VIEWER} } }`);
    if (data.me && asked === token) adopt(data.me, null, false);
  } catch (error) {
    if (error.sessionEnded) return;
    if (viewer) schedule();
    else throw error;
  }
}

/** Picks up the stored session at start-up: the cached viewer shows at once. */
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
  await verify();
}

export async function signIn(login, password) {
  const data = await gql(
    `mutation SignIn($input: LoginInput!) { login(input: $input) { token expiresAt viewer { ${VIEWER} } } }`,
    { input: { login, password } },
    { auth: false },
  );
  token = data.login.token;
  endedMessage = null;
  write(PLAYGROUND_KEY, token);
  adopt(data.login.viewer, data.login.expiresAt, true);
  return viewer;
}

/** Forgets the session at once, then tells the server. */
export async function signOut() {
  const ending = token;
  end(null);
  if (ending) await gql('mutation SignOut { logout }', {}, { token: ending });
}

/** Forgets the session; `message` says why on the sign-in page. */
export function end(message) {
  if (message) endedMessage = message;
  clearTimeout(refreshTimer);
  // The playground's copy goes too, unless the playground has moved on.
  if (token && read(PLAYGROUND_KEY) === token) write(PLAYGROUND_KEY, null);
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

/** When to refresh, by the server's clock: halfway through the lifetime. */
function refreshDue() {
  const expires = Date.parse(viewer.sessionExpiresAt);
  const half = lifetimeMs > 0 ? lifetimeMs / 2 : (expires - serverNow()) / 2;
  return expires - half;
}

function schedule() {
  clearTimeout(refreshTimer);
  if (!token || !viewer) return;
  const wait = Math.max(SHORTEST_WAIT_MS, Math.min(LONGEST_WAIT_MS, refreshDue() - serverNow()));
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
  if (document.visibilityState === 'visible' && token && viewer && serverNow() >= refreshDue()) {
    refreshNow();
  }
});

// Another console tab signed in or out.
window.addEventListener('storage', (event) => {
  if (event.key !== TOKEN_KEY || event.newValue === token) return;
  if (!event.newValue) {
    end('Your session ended in another tab.');
    return;
  }
  token = event.newValue;
  viewer = null;
  clearTimeout(refreshTimer);
  verify().then(changed, changed);
});
