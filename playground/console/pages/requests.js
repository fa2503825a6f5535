// Every request, as the `requests` query gives it (no inputs, outputs,
// errors or logs), filtered and paged. The filter lives in the URL.

import { gql } from '../api.js';
import { h, replace, errorBox, filters } from '../dom.js';
import { duration, instant, localZone, shortId } from '../format.js';

export const title = 'Requests';
export const permission = 'VIEW_ALL_REQUESTS';

// The server's complexity limit (1,000 fields a query by default) allows
// 50 rows of these fields a page.
const PAGE_SIZES = [25, 50];
const STATUSES = ['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const QUERY = `query Requests($filter: RequestsFilter, $first: Int, $after: String) {
  requests(filter: $filter, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id modelId authType userId sessionId status attempts
      createdAt queueTimeMs jobTimeMs totalTimeMs instanceId
    }
  }
}`;
const MODELS = 'query Models { models(includeDisabled: true) { id enabled } }';
const FIELDS = ['user', 'session', 'model', 'status', 'from', 'to'];

export function render(main, { params, setParams }) {
  const view = Object.fromEntries(FIELDS.map((f) => [f, params.get(f) || '']));
  view.timeZone = params.get('timeZone') || localZone();
  view.size = PAGE_SIZES.includes(Number(params.get('size'))) ? Number(params.get('size')) : 50;
  // Cursors of the pages before this one: `after` for page n is cursors[n].
  let cursors = [null];
  let next = null;
  let generation = 0;
  const errors = errorBox();

  const user = h('input', { id: 'requests-user', value: view.user, placeholder: 'user id', spellcheck: 'false' });
  const session = h('input', {
    id: 'requests-session',
    value: view.session,
    placeholder: 'anonymous session id',
    spellcheck: 'false',
  });
  const model = h('select', { id: 'requests-model' }, h('option', { value: '' }, 'Every model'));
  const status = h(
    'select',
    { id: 'requests-status' },
    h('option', { value: '' }, 'Any status'),
    STATUSES.map((s) => h('option', { value: s }, s.toLowerCase())),
  );
  status.value = view.status;
  const from = h('input', { id: 'requests-from', type: 'date', value: view.from });
  const to = h('input', { id: 'requests-to', type: 'date', value: view.to });
  const size = h(
    'select',
    { id: 'requests-size' },
    PAGE_SIZES.map((n) => h('option', { value: n, selected: n === view.size }, `${n} a page`)),
  );
  const newer = h('button', { type: 'button', id: 'requests-newer', disabled: true }, '← Newer');
  const older = h('button', { type: 'button', id: 'requests-older', disabled: true }, 'Older →');
  const where = h('span', { class: 'page-number', id: 'requests-page' });
  const table = h('table', { id: 'requests-table', class: 'data' });

  function writeView() {
    const out = new URLSearchParams();
    for (const f of FIELDS) if (view[f]) out.set(f, view[f]);
    // With dates, the zone they are in: a shared link means the same days.
    if (view.from || view.to) out.set('timeZone', view.timeZone);
    if (view.size !== 50) out.set('size', view.size);
    setParams(out);
  }

  function filter() {
    const f = {};
    if (view.user) f.userId = view.user;
    if (view.session) f.sessionId = view.session;
    if (view.model) f.modelId = view.model;
    if (view.status) f.status = view.status;
    if (view.from) f.from = view.from;
    if (view.to) f.to = view.to;
    if (view.from || view.to) f.timeZone = view.timeZone;
    return f;
  }

  function filterBy(field, value) {
    view[field] = value;
    if (field === 'user') user.value = value;
    if (field === 'session') session.value = value;
    restart();
  }

  function draw(nodes) {
    const head = h(
      'thead',
      {},
      h(
        'tr',
        {},
        [
          ['Created', true],
          ['Model', true],
          ['Who', true],
          ['Status', true],
          ['Attempts', false],
          ['Queue', false],
          ['Job', false],
          ['Total', false],
          ['Instance', true],
          ['Id', true],
        ].map(([c, text]) => h('th', { scope: 'col', class: text ? 'text' : null }, c)),
      ),
    );
    const body = h(
      'tbody',
      {},
      nodes.length === 0
        ? h('tr', {}, h('td', { colspan: 10, class: 'empty' }, 'No request matches.'))
        : nodes.map((r) => {
            const who =
              r.authType === 'USER'
                ? h('button', { type: 'button', class: 'link', title: `Only user ${r.userId}`, onclick: () => filterBy('user', r.userId) }, `user ${shortId(r.userId)}`)
                : h(
                    'button',
                    { type: 'button', class: 'link', title: `Only session ${r.sessionId}`, onclick: () => filterBy('session', r.sessionId) },
                    `anonymous ${shortId(r.sessionId)}`,
                  );
            return h(
              'tr',
              { dataset: { id: r.id } },
              h('td', { class: 'text' }, instant(r.createdAt)),
              h('td', { class: 'text' }, r.modelId),
              h('td', { class: 'text' }, who),
              h('td', { class: 'text' }, h('span', { class: `status ${r.status.toLowerCase()}` }, r.status.toLowerCase())),
              h('td', {}, r.attempts),
              h('td', {}, duration(r.queueTimeMs)),
              h('td', {}, duration(r.jobTimeMs)),
              h('td', {}, duration(r.totalTimeMs)),
              h('td', { class: 'text mono', title: r.instanceId || '' }, shortId(r.instanceId)),
              h('td', { class: 'text mono', title: r.id }, shortId(r.id)),
            );
          }),
    );
    replace(table, head, body);
  }

  async function load() {
    const mine = ++generation;
    const page = cursors.length - 1;
    errors.clear();
    newer.disabled = true;
    older.disabled = true;
    try {
      const data = await gql(QUERY, { filter: filter(), first: view.size, after: cursors[page] });
      if (mine !== generation) return;
      const { nodes, pageInfo } = data.requests;
      draw(nodes);
      next = pageInfo.hasNextPage ? pageInfo.endCursor : null;
      newer.disabled = page === 0;
      older.disabled = !next;
      where.textContent = `Page ${page + 1}`;
    } catch (error) {
      if (mine !== generation) return;
      replace(table);
      errors.show(error);
      newer.disabled = page === 0;
    }
  }

  function restart() {
    cursors = [null];
    writeView();
    load();
  }

  newer.addEventListener('click', () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });
  older.addEventListener('click', () => {
    if (next) cursors.push(next);
    load();
  });

  function fromForm() {
    view.user = user.value.trim();
    view.session = session.value.trim();
    view.model = model.value;
    view.status = status.value;
    view.from = from.value;
    view.to = to.value;
    view.size = Number(size.value);
    restart();
  }
  for (const input of [user, session, model, status, from, to, size]) input.addEventListener('change', fromForm);

  main.append(
    h('h1', {}, 'Requests'),
    filters(
      h('div', { class: 'field' }, h('label', { for: 'requests-user' }, 'User id'), user),
      h('div', { class: 'field' }, h('label', { for: 'requests-session' }, 'Anonymous session id'), session),
      h('div', { class: 'field' }, h('label', { for: 'requests-model' }, 'Model'), model),
      h('div', { class: 'field' }, h('label', { for: 'requests-status' }, 'Status'), status),
      h('div', { class: 'field' }, h('label', { for: 'requests-from' }, `From (${view.timeZone})`), from),
      h('div', { class: 'field' }, h('label', { for: 'requests-to' }, 'To'), to),
    ),
    h('p', { class: 'hint' }, 'Inputs, outputs, errors and logs are private to whoever sent a request; they are not shown here.'),
    errors.el,
    h('div', { class: 'table-wrap' }, table),
    h('div', { class: 'pager' }, newer, where, older, size),
  );

  // The chosen model first, so the filter holds even before (or without)
  // the list of every model.
  if (view.model) model.append(h('option', { value: view.model }, view.model));
  model.value = view.model;
  gql(MODELS)
    .then((data) => {
      const current = model.value;
      replace(
        model,
        h('option', { value: '' }, 'Every model'),
        data.models.map((m) => h('option', { value: m.id }, m.enabled ? m.id : `${m.id} (disabled)`)),
      );
      model.value = current;
    })
    .catch((error) => errors.show(error));
  writeView();
  load();
}
