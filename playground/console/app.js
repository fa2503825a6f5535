// The console's shell: the top bar, the menu, the loading bar, and the
// router that shows one page at a time. Pages live in ./pages; each exports
// a title, the permission it needs (if any) and `render(main, context)`,
// which may return a function that tears the page down.

import { configure, onBusy } from './api.js';
import { h, playground, replace } from './dom.js';
import * as session from './session.js';
import * as home from './pages/home.js';
import * as instances from './pages/instances.js';
import * as requests from './pages/requests.js';
import * as signin from './pages/signin.js';
import * as stats from './pages/stats.js';

const BASE = '/console';
const PAGES = {
  '/': home,
  '/signin': signin,
  '/stats': stats,
  '/requests': requests,
  '/instances': instances,
};
const MENU = [
  ['/stats', stats],
  ['/requests', requests],
  ['/instances', instances],
];

const main = document.getElementById('main');
const nav = document.getElementById('menu');
const who = document.getElementById('who');
const menuButton = document.getElementById('menu-button');
const sidebar = document.getElementById('sidebar');
let teardown = null;
// Who is shown, and what they may see, as of the last page drawn.
let drawnFor = null;
let generation = 0;

configure({
  token: session.currentToken,
  // Only the session in use: a late answer about an older token (from
  // before a sign-in) changes nothing.
  sessionEnded: (error, token) => {
    if (!token || token !== session.currentToken()) return;
    session.end(
      error.code === 'SESSION_EXPIRED'
        ? 'Your session has expired. Sign in again.'
        : 'Your session has ended (signed out elsewhere, or revoked). Sign in again.',
    );
  },
  rolesChanged: (token) => {
    if (token === session.currentToken()) session.verify().finally(route);
  },
});

onBusy((busy) => {
  const bar = document.getElementById('loading');
  bar.hidden = !busy;
  document.body.setAttribute('aria-busy', busy ? 'true' : 'false');
});

/** The page path inside the console: `/console/stats` → `/stats`. */
function pagePath() {
  const path = window.location.pathname.slice(BASE.length) || '/';
  return path.length > 1 ? path.replace(/\/+$/, '') : '/';
}

/** Moves to `path` (inside the console) with `params`. */
export function navigate(path, params = null, { replace: replaceEntry = false } = {}) {
  const query = params && params.toString() ? `?${params}` : '';
  const url = `${BASE}${path}${query}`;
  if (replaceEntry) window.history.replaceState(null, '', url);
  else window.history.pushState(null, '', url);
  route();
}

function renderChrome() {
  const viewer = session.currentViewer();
  replace(
    nav,
    MENU.filter(([, page]) => session.can(page.permission)).map(([path, page]) =>
      h('a', { href: `${BASE}${path}`, 'data-nav': true, 'aria-current': pagePath() === path ? 'page' : null }, page.title),
    ),
    playground() ? h('a', { href: '/graphiql', class: 'external', target: '_blank', rel: 'noopener' }, 'GraphiQL playground ↗') : null,
  );
  if (viewer) {
    replace(
      who,
      h('span', { class: 'viewer', title: viewer.email || '' }, viewer.username || 'anonymous session'),
      h('button', { type: 'button', id: 'signout', onclick: signOut }, 'Sign out'),
    );
  } else if (pagePath() === '/signin') {
    replace(who);
  } else {
    replace(who, h('a', { href: `${BASE}/signin`, 'data-nav': true }, 'Sign in'));
  }
}

// Signing out ends in the session's change listener below, which shows
// the sign-in page.
function signOut() {
  // The session is forgotten here at once; the server's answer changes
  // nothing on screen.
  session.signOut().catch((error) => console.warn('modelfleet: the server did not take the sign-out', error.message));
}

function route() {
  if (teardown) teardown();
  teardown = null;
  closeMenu();
  const path = pagePath();
  const page = PAGES[path];
  drawnFor = viewerKey(session.currentViewer());
  renderChrome();
  if (!page) {
    document.title = 'Not found · modelfleet';
    replace(main, h('h1', {}, 'Not found'), h('p', {}, 'The console has no page at this address.'));
    return;
  }
  document.title = `${page.title} · modelfleet`;
  if (page.permission && !session.currentViewer()) {
    const next = new URLSearchParams({ next: `${path}${window.location.search}` });
    navigate('/signin', next, { replace: true });
    return;
  }
  if (page.permission && !session.can(page.permission)) {
    replace(
      main,
      h('h1', {}, page.title),
      h(
        'p',
        { class: 'refusal', role: 'alert' },
        `You do not have access to ${page.title}: it needs the ${page.permission} permission, which administrators have.`,
      ),
    );
    return;
  }
  const params = new URLSearchParams(window.location.search);
  const context = {
    params,
    navigate,
    // Rewrites the address bar without a new history entry or a re-render:
    // pages keep their filters in the URL so views can be bookmarked.
    setParams(next) {
      const query = next.toString();
      window.history.replaceState(null, '', `${BASE}${path}${query ? `?${query}` : ''}`);
    },
  };
  replace(main);
  const mine = ++generation;
  const cleanup = page.render(main, context) || null;
  // A page may move elsewhere while rendering (the front page does); the
  // page it moved to has already taken over.
  if (mine !== generation) {
    if (cleanup) cleanup();
    return;
  }
  teardown = cleanup;
  main.focus({ preventScroll: true });
}

function closeMenu() {
  sidebar.classList.remove('open');
  menuButton.setAttribute('aria-expanded', 'false');
}

menuButton.addEventListener('click', () => {
  const open = !sidebar.classList.contains('open');
  sidebar.classList.toggle('open', open);
  menuButton.setAttribute('aria-expanded', String(open));
});

// The menu, opened over the page on a narrow screen, closes on Escape or
// a click elsewhere.
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && sidebar.classList.contains('open')) {
    closeMenu();
    menuButton.focus();
  }
});

document.addEventListener('click', (event) => {
  if (sidebar.classList.contains('open') && !sidebar.contains(event.target) && !menuButton.contains(event.target)) {
    closeMenu();
  }
  const link = event.target.closest('a[data-nav]');
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) {
    return;
  }
  event.preventDefault();
  const url = new URL(link.href);
  navigate(url.pathname.slice(BASE.length) || '/', url.searchParams);
});

window.addEventListener('popstate', route);

session.onChange((viewer) => {
  if (!viewer) {
    drawnFor = null;
    renderChrome();
    if (pagePath() !== '/signin') {
      navigate('/signin', new URLSearchParams({ next: `${pagePath()}${window.location.search}` }), { replace: true });
    }
    return;
  }
  // A refresh changes nothing on screen; a new viewer or new permissions
  // (another tab signed in, roles changed) draw the page again.
  // (The sign-in page moves on by itself.)
  if (drawnFor !== null && drawnFor !== viewerKey(viewer) && pagePath() !== '/signin') route();
  else renderChrome();
});

function viewerKey(viewer) {
  return viewer ? `${viewer.id} ${viewer.permissions.join(',')}` : '';
}

session
  .restore()
  .catch((error) => {
    // The server could not be asked; the pages will show their own errors.
    console.warn('modelfleet: could not check the session', error.message);
  })
  .finally(route);
