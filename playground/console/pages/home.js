// The console's front page: the first admin page the viewer may open, or
// a word on what the console is for.

import { h, playground } from '../dom.js';
import * as session from '../session.js';

export const title = 'Console';
export const permission = null;

const ADMIN_PAGES = [
  ['/stats', 'VIEW_STATS'],
  ['/requests', 'VIEW_ALL_REQUESTS'],
  ['/instances', 'MANAGE_INSTANCES'],
];

export function render(main, { navigate }) {
  const viewer = session.currentViewer();
  if (!viewer) {
    navigate('/signin', null, { replace: true });
    return;
  }
  const first = ADMIN_PAGES.find(([, p]) => session.can(p));
  if (first) {
    navigate(first[0], null, { replace: true });
    return;
  }
  main.append(
    h('h1', {}, 'modelfleet console'),
    h(
      'p',
      { class: 'refusal', role: 'alert' },
      `Signed in as ${viewer.username || 'an anonymous session'}. The console's pages are for administrators, and this account is not one.`,
    ),
    playground()
      ? h('p', {}, 'The ', h('a', { href: '/graphiql' }, 'GraphiQL playground'), ' works for every account.')
      : null,
  );
}
