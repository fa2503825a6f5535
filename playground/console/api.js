// Talks to modelfleet's GraphQL API: queries and mutations over HTTP,
// subscriptions over a WebSocket (graphql-transport-ws), the bearer token
// from the session, and a count of calls in flight for the loading bar.

const ENDPOINT = '/graphql';

/** An error the API answered with, or a failure to reach it. */
export class ApiError extends Error {
  constructor(message, { code = null, fields = null, status = 0 } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.fields = fields;
    this.status = status;
  }

  /** The session is gone: the only cure is to sign in again. */
  get sessionEnded() {
    return this.code === 'SESSION_EXPIRED' || this.code === 'UNAUTHENTICATED';
  }
}

let tokenSource = () => null;
let onSessionEnded = () => {};
let onRolesChanged = () => {};
let inFlight = 0;
// The server's clock minus the browser's, from the last response's `Date`.
let clockOffsetMs = 0;
const busyListeners = new Set();

/**
 * Where calls find the token; what to do when the server says the session
 * that token belongs to has ended (`sessionEnded(error, token)`), and when
 * its roles changed under a live subscription (`rolesChanged(token)`).
 */
export function configure({ token, sessionEnded, rolesChanged }) {
  tokenSource = token;
  onSessionEnded = sessionEnded;
  onRolesChanged = rolesChanged;
}

/** Now, by the server's clock (session expiry times are the server's). */
export function serverNow() {
  return Date.now() + clockOffsetMs;
}

function noteClock(response) {
  const date = Date.parse(response.headers.get('date') || '');
  // The header has whole seconds: keep the offset only when it is larger
  // than that rounding.
  if (!Number.isNaN(date)) {
    const offset = date - Date.now();
    clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
  }
}

/** Calls `listener(busy)` whenever calls start or all have finished. */
export function onBusy(listener) {
  busyListeners.add(listener);
  listener(inFlight > 0);
}

function setBusy(delta) {
  const was = inFlight > 0;
  inFlight += delta;
  if (was !== inFlight > 0) busyListeners.forEach((l) => l(inFlight > 0));
}

/** Wraps a promise so the loading bar shows while it is pending. */
export async function tracked(promise) {
  setBusy(1);
  try {
    return await promise;
  } finally {
    setBusy(-1);
  }
}

function errorOf(body, status) {
  const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
  if (!first) return new ApiError(`The server answered ${status} without a result.`, { status });
  const ext = first.extensions || {};
  let message = first.message;
  // Bad input names every field and rule it broke; those say it all.
  const parts = Object.entries(ext.fields || {}).map(([field, rules]) => `${field}: ${[].concat(rules).join('; ')}`);
  if (parts.length) message = parts.join(' · ');
  return new ApiError(message, { code: ext.code || null, fields: ext.fields || null, status });
}

/**
 * Runs one query or mutation and resolves to its `data`, or rejects with an
 * ApiError carrying the server's message and code.
 */
export async function gql(query, variables = {}, { auth = true, token: given = null } = {}) {
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  const token = given || (auth ? tokenSource() : null);
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  let body = null;
  setBusy(1);
  try {
    try {
      response = await fetch(ENDPOINT, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
    } catch (e) {
      throw new ApiError(`The server cannot be reached (${e.message}).`);
    }
    noteClock(response);
    try {
      body = await response.json();
    } catch {
      throw new ApiError(`The server answered ${response.status} with something other than JSON.`, {
        status: response.status,
      });
    }
  } finally {
    setBusy(-1);
  }
  if (body.errors && body.errors.length) {
    const error = errorOf(body, response.status);
    if (token && error.sessionEnded) onSessionEnded(error, token);
    throw error;
  }
  return body.data;
}

/**
 * Fetches a file from the API with the session's token and hands it to the
 * browser as a download. Resolves to the file name used.
 */
export async function download(path, fallbackName) {
  const token = tokenSource();
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const response = await tracked(fetch(path, { headers }));
  if (!response.ok) {
    let error;
    try {
      error = errorOf(await response.json(), response.status);
    } catch {
      error = new ApiError(`The download failed with status ${response.status}.`, { status: response.status });
    }
    if (token && error.sessionEnded) onSessionEnded(error, token);
    throw error;
  }
  const match = /filename="([^"]+)"/.exec(response.headers.get('content-disposition') || '');
  saveBlob(await response.blob(), match ? match[1] : fallbackName);
}

/** Offers `blob` to the browser as a file called `name`. */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * A subscription that lives as long as the page wants it: it reconnects
 * after a dropped connection (telling `onReconnect`, since changes may have
 * been missed meanwhile) and stops for good when the server ends the
 * session. Returns a function that closes it.
 */
export function subscribe(query, variables, { onData, onError, onReconnect, onOpen }) {
  let socket = null;
  let closed = false;
  let attempts = 0;
  let retryTimer = null;
  let everOpened = false;

  function connect() {
    const url = new URL(ENDPOINT, window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const token = tokenSource();
    socket = new WebSocket(url, 'graphql-transport-ws');
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({ type: 'connection_init', payload: { token } }));
    });
    socket.addEventListener('message', (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      switch (message.type) {
        case 'connection_ack':
          attempts = 0;
          socket.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query, variables } }));
          if (everOpened && onReconnect) onReconnect();
          everOpened = true;
          if (onOpen) onOpen();
          break;
        case 'ping':
          socket.send(JSON.stringify({ type: 'pong' }));
          break;
        case 'next':
          if (message.payload.errors && message.payload.errors.length) {
            onError(errorOf(message.payload, 200));
          } else {
            onData(message.payload.data);
          }
          break;
        case 'error':
          onError(errorOf({ errors: message.payload }, 200));
          break;
        default:
          break;
      }
    });
    socket.addEventListener('close', (event) => {
      if (closed) return;
      // 4403 with this reason: the roles changed, so what this page may
      // show is asked again. Otherwise 4403 means the token was refused,
      // and 4401 that the session ended or expired.
      if (event.code === 4403 && event.reason.startsWith('permissions changed')) {
        onRolesChanged(token);
        return;
      }
      if (event.code === 4401 || event.code === 4403) {
        const expired = event.reason === 'session expired';
        const error = new ApiError(expired ? 'Your session has expired.' : 'Your session has ended.', {
          code: expired ? 'SESSION_EXPIRED' : 'UNAUTHENTICATED',
        });
        onSessionEnded(error, token);
        onError(error);
        return;
      }
      attempts += 1;
      const delay = Math.min(30_000, 500 * 2 ** Math.min(attempts, 6));
      onError(new ApiError(`Live updates were interrupted; reconnecting in ${Math.round(delay / 1000)} s.`));
      retryTimer = setTimeout(connect, delay);
    });
  }

  connect();
  return () => {
    closed = true;
    clearTimeout(retryTimer);
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, 'done');
  };
}
