// Stats: the `stats` query as a sortable table, its filters and grouping
// kept in the URL, and a CSV of exactly the rows and order on screen.

import { gql, saveBlob } from '../api.js';
import { h, replace, errorBox, selected, filters } from '../dom.js';
import { count, csvLine, duration, localZone, shortId } from '../format.js';

export const title = 'Stats';
export const permission = 'VIEW_STATS';

const DIMENSIONS = [
  ['MODEL', 'Model'],
  ['AUTH_TYPE', 'Auth type'],
  ['PRINCIPAL', 'User or session'],
  ['DAY', 'Day'],
];
const DURATION = 'totalMs minMs maxMs avgMs count';
const STATS = `query Stats($filter: StatsFilter, $groupBy: [StatsDimension!]) {
  stats(filter: $filter, groupBy: $groupBy) {
    modelId authType principalId day
    totalCount successCount failCount cancelledCount activeCount
    jobTime { ${DURATION} } totalTime { ${DURATION} } queueTime { ${DURATION} }
    jobTimeP50Ms jobTimeP95Ms rolledUpCount
  }
}`;
const OPTIONS = `query StatsOptions($filter: StatsFilter) {
  statsFilterOptions(filter: $filter, limit: 500) {
    models { id name enabled }
    users { id username requestCount } usersComplete
    anonymousSessions { id requestCount } anonymousSessionsComplete
  }
}`;

/**
 * Every column, in the order of `GET /api/stats.csv`, named as its CSV
 * column. `value` is the raw figure (what the CSV holds); `show` is how the
 * table writes it.
 */
function columns(groupBy, names) {
  const keys = {
    MODEL: { key: 'modelId', group: 'Group', label: 'Model', value: (r) => r.modelId, text: true },
    AUTH_TYPE: {
      key: 'authType',
      group: 'Group',
      label: 'Auth type',
      value: (r) => r.authType,
      show: (r) => (r.authType === 'ANON' ? 'anonymous' : 'user'),
      text: true,
    },
    PRINCIPAL: {
      key: 'principalId',
      group: 'Group',
      label: 'User or session',
      value: (r) => r.principalId,
      show: (r) => names.get(r.principalId) || shortId(r.principalId),
      sortValue: (r) => names.get(r.principalId) || r.principalId,
      title: (r) => r.principalId,
      text: true,
    },
    DAY: { key: 'day', group: 'Group', label: 'Day', value: (r) => r.day, text: true },
  };
  const cols = DIMENSIONS.filter(([d]) => groupBy.includes(d)).map(([d]) => keys[d]);
  const counts = [
    ['totalCount', 'Total'],
    ['successCount', 'Succeeded'],
    ['failCount', 'Failed'],
    ['cancelledCount', 'Cancelled'],
    ['activeCount', 'Active'],
  ];
  for (const [key, label] of counts) {
    cols.push({ key, group: 'Requests', label, value: (r) => r[key], show: (r) => count(r[key]) });
  }
  const parts = [
    ['TotalMs', 'Sum', 'totalMs'],
    ['MinMs', 'Min', 'minMs'],
    ['MaxMs', 'Max', 'maxMs'],
    ['AvgMs', 'Mean', 'avgMs'],
    ['Count', 'Count', 'count'],
  ];
  for (const [name, group] of [
    ['jobTime', 'Job time'],
    ['totalTime', 'Total time'],
    ['queueTime', 'Queue time'],
  ]) {
    for (const [suffix, label, field] of parts) {
      const value = (r) => (r[name] ? r[name][field] : null);
      cols.push({
        key: `${name}${suffix}`,
        group,
        label,
        value,
        show: field === 'count' ? (r) => count(value(r)) : (r) => duration(value(r)),
      });
    }
  }
  for (const p of ['50', '95']) {
    const key = `jobTimeP${p}Ms`;
    cols.push({
      key,
      group: 'Job time percentiles',
      label: `p${p}`,
      value: (r) => r[key],
      show: (r) => duration(r[key]),
      hint: 'PostgreSQL only, over requests not yet rolled up',
    });
  }
  cols.push({
    key: 'rolledUpCount',
    group: 'Retention',
    label: 'Rolled up',
    value: (r) => r.rolledUpCount,
    show: (r) => count(r.rolledUpCount),
    hint: 'Requests counted from the rollup of purged ones',
  });
  return cols;
}

/** The view the URL describes. */
function readView(params) {
  const groupParam = params.get('groupBy');
  return {
    authType: params.get('authType') || '',
    from: params.get('from') || '',
    to: params.get('to') || '',
    timeZone: params.get('timeZone') || localZone(),
    models: params.getAll('model'),
    users: params.getAll('user'),
    sessions: params.getAll('session'),
    groupBy: groupParam === null ? ['MODEL'] : groupParam.split(',').filter(Boolean),
    sort: params.get('sort') || '',
  };
}

function writeView(view) {
  const params = new URLSearchParams();
  if (view.authType) params.set('authType', view.authType);
  if (view.from) params.set('from', view.from);
  if (view.to) params.set('to', view.to);
  // Always: a shared link shows the same days in another zone.
  params.set('timeZone', view.timeZone);
  view.models.forEach((m) => params.append('model', m));
  view.users.forEach((u) => params.append('user', u));
  view.sessions.forEach((s) => params.append('session', s));
  if (view.groupBy.join(',') !== 'MODEL') params.set('groupBy', view.groupBy.join(','));
  if (view.sort) params.set('sort', view.sort);
  return params;
}

function filterOf(view, { withPrincipals = true } = {}) {
  const filter = { timeZone: view.timeZone };
  if (view.authType) filter.authType = view.authType;
  if (view.from) filter.from = view.from;
  if (view.to) filter.to = view.to;
  if (view.models.length) filter.modelIds = view.models;
  if (withPrincipals && view.users.length) filter.userIds = view.users;
  if (withPrincipals && view.sessions.length) filter.sessionIds = view.sessions;
  return filter;
}

function sortRows(rows, cols, sort) {
  if (!sort) return rows;
  const desc = sort.startsWith('-');
  const col = cols.find((c) => c.key === sort.replace(/^-/, ''));
  if (!col) return rows;
  const valueOf = col.sortValue || col.value;
  const sorted = rows.slice().sort((a, b) => {
    const x = valueOf(a);
    const y = valueOf(b);
    // Blanks last, whichever the direction.
    if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1;
    if (y === null || y === undefined) return -1;
    const order = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
    return desc ? -order : order;
  });
  return sorted;
}

export function render(main, { params, setParams }) {
  const view = readView(params);
  const errors = errorBox();
  let rows = [];
  let names = new Map();
  let generation = 0;

  const auth = h(
    'select',
    { id: 'stats-auth', name: 'authType' },
    h('option', { value: '' }, 'Users and anonymous'),
    h('option', { value: 'USER' }, 'Users'),
    h('option', { value: 'ANON' }, 'Anonymous sessions'),
  );
  auth.value = view.authType;
  const from = h('input', { id: 'stats-from', type: 'date', value: view.from });
  const to = h('input', { id: 'stats-to', type: 'date', value: view.to });
  const zone = h('input', { id: 'stats-zone', value: view.timeZone, list: 'stats-zones', spellcheck: 'false' });
  const zones = h(
    'datalist',
    { id: 'stats-zones' },
    (Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : []).map((z) => h('option', { value: z })),
  );
  // The chosen models first, so the filter holds before the list loads.
  const models = h(
    'select',
    { id: 'stats-models', multiple: true, size: 5 },
    view.models.map((id) => h('option', { value: id, selected: true }, id)),
  );
  const principalLabel = h('label', { for: 'stats-principals' });
  const principals = h(
    'select',
    { id: 'stats-principals', multiple: true, size: 5 },
    view.users.map((id) => h('option', { value: `user:${id}`, selected: true }, `user ${shortId(id)}`)),
    view.sessions.map((id) => h('option', { value: `session:${id}`, selected: true }, `session ${shortId(id)}`)),
  );
  const groups = DIMENSIONS.map(([d, label]) =>
    h(
      'label',
      { class: 'check' },
      h('input', { type: 'checkbox', id: `group-${d}`, value: d, checked: view.groupBy.includes(d) }),
      label,
    ),
  );
  const csv = h('button', { type: 'button', id: 'stats-csv', disabled: true }, 'Download CSV');
  const summary = h('p', { class: 'summary', id: 'stats-summary', 'aria-live': 'polite' });
  const table = h('table', { id: 'stats-table', class: 'data' });

  function principalOptions(options) {
    const users = view.authType !== 'ANON';
    const sessions = view.authType !== 'USER';
    principalLabel.textContent = users && sessions ? 'Users and sessions' : users ? 'Users' : 'Anonymous sessions';
    const chosen = new Set([...view.users, ...view.sessions]);
    const userOptions = options.users.map((u) =>
      h(
        'option',
        { value: `user:${u.id}`, selected: chosen.has(u.id) },
        `${u.username || `deleted user ${shortId(u.id)}`} (${count(u.requestCount)})`,
      ),
    );
    const sessionOptions = options.anonymousSessions.map((s) =>
      h('option', { value: `session:${s.id}`, selected: chosen.has(s.id) }, `${shortId(s.id)} (${count(s.requestCount)})`),
    );
    // Chosen ones the list no longer offers stay chosen and visible.
    const offered = new Set([...options.users.map((u) => u.id), ...options.anonymousSessions.map((s) => s.id)]);
    const kept = [
      ...view.users.filter((id) => !offered.has(id)).map((id) => h('option', { value: `user:${id}`, selected: true }, `user ${shortId(id)}`)),
      ...view.sessions
        .filter((id) => !offered.has(id))
        .map((id) => h('option', { value: `session:${id}`, selected: true }, `session ${shortId(id)}`)),
    ];
    replace(
      principals,
      kept,
      users ? h('optgroup', { label: options.usersComplete ? 'Users' : 'Users (most active 500)' }, userOptions) : null,
      sessions
        ? h(
            'optgroup',
            { label: options.anonymousSessionsComplete ? 'Anonymous sessions' : 'Anonymous sessions (most active 500)' },
            sessionOptions,
          )
        : null,
    );
  }

  function modelOptions(options) {
    const chosen = new Set(view.models);
    replace(
      models,
      options.models.map((m) =>
        h('option', { value: m.id, selected: chosen.has(m.id) }, m.enabled ? m.id : `${m.id} (disabled)`),
      ),
    );
  }

  function drawTable() {
    const cols = columns(view.groupBy, names);
    const shown = sortRows(rows, cols, view.sort);
    const groupsRow = [];
    for (const col of cols) {
      const last = groupsRow[groupsRow.length - 1];
      if (last && last.name === col.group) last.span += 1;
      else groupsRow.push({ name: col.group, span: 1 });
    }
    const sortKey = view.sort.replace(/^-/, '');
    const head = h(
      'thead',
      {},
      h('tr', { class: 'groups' }, groupsRow.map((g) => h('th', { colspan: g.span, scope: 'colgroup' }, g.name))),
      h(
        'tr',
        {},
        cols.map((col) => {
          const direction = sortKey === col.key ? (view.sort.startsWith('-') ? 'descending' : 'ascending') : null;
          return h(
            'th',
            { scope: 'col', 'aria-sort': direction || 'none', class: col.text ? 'text' : null, title: col.hint || col.key },
            h(
              'button',
              {
                type: 'button',
                class: 'sort',
                dataset: { column: col.key },
                onclick: () => {
                  // First click sorts figures high to low and names A to Z.
                  const first = col.text ? col.key : `-${col.key}`;
                  const flipped = first.startsWith('-') ? col.key : `-${col.key}`;
                  view.sort = view.sort === first ? flipped : first;
                  setParams(writeView(view));
                  drawTable();
                },
              },
              col.label,
              direction ? (direction === 'ascending' ? ' ▲' : ' ▼') : '',
            ),
          );
        }),
      ),
    );
    const body = h(
      'tbody',
      {},
      shown.map((row) =>
        h(
          'tr',
          {},
          cols.map((col) =>
            h(
              'td',
              {
                class: col.text ? 'text' : null,
                title: col.title ? col.title(row) : null,
                // The raw figure, as the CSV holds it.
                dataset: { column: col.key, value: col.value(row) ?? '' },
              },
              col.show ? col.show(row) : (col.value(row) ?? '—'),
            ),
          ),
        ),
      ),
    );
    replace(table, head, body);
    return { cols, shown };
  }

  async function load() {
    const mine = ++generation;
    errors.clear();
    csv.disabled = true;
    setParams(writeView(view));
    const groupBy = view.groupBy;
    try {
      const [options, data] = await Promise.all([
        gql(OPTIONS, { filter: filterOf(view, { withPrincipals: false }) }),
        gql(STATS, { filter: filterOf(view), groupBy }),
      ]);
      if (mine !== generation) return;
      const opts = options.statsFilterOptions;
      names = new Map(opts.users.filter((u) => u.username).map((u) => [u.id, u.username]));
      modelOptions(opts);
      principalOptions(opts);
      rows = data.stats;
      drawTable();
      const by = DIMENSIONS.filter(([d]) => groupBy.includes(d)).map(([, l]) => l.toLowerCase());
      summary.textContent = `${count(rows.length)} ${rows.length === 1 ? 'row' : 'rows'}${
        by.length ? `, grouped by ${by.join(', ')}` : ', all requests together'
      }; dates in ${view.timeZone}.`;
      csv.disabled = false;
    } catch (error) {
      if (mine !== generation) return;
      rows = [];
      replace(table);
      summary.textContent = '';
      errors.show(error);
    }
  }

  function fromForm() {
    view.authType = auth.value;
    view.from = from.value;
    view.to = to.value;
    view.timeZone = zone.value.trim() || localZone();
    view.models = selected(models);
    const chosen = selected(principals);
    view.users = chosen.filter((v) => v.startsWith('user:')).map((v) => v.slice(5));
    view.sessions = chosen.filter((v) => v.startsWith('session:')).map((v) => v.slice(8));
    // A principal of the other kind no longer fits the auth type.
    if (view.authType === 'USER') view.sessions = [];
    if (view.authType === 'ANON') view.users = [];
    view.groupBy = groups.map((g) => g.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    load();
  }

  function downloadCsv() {
    const { cols, shown } = drawTable();
    let text = csvLine(cols.map((c) => c.key));
    for (const row of shown) text += csvLine(cols.map((c) => c.value(row)));
    const label =
      view.from && view.to ? `${view.from}_${view.to}` : view.from ? `from-${view.from}` : view.to ? `to-${view.to}` : 'all-time';
    saveBlob(new Blob([text], { type: 'text/csv;charset=utf-8' }), `modelfleet-stats-${label}.csv`);
  }
  csv.addEventListener('click', downloadCsv);

  for (const input of [auth, from, to, zone, models, principals, ...groups.map((g) => g.querySelector('input'))]) {
    input.addEventListener('change', fromForm);
  }

  main.append(
    h('h1', {}, 'Stats'),
    filters(
      h('div', { class: 'field' }, h('label', { for: 'stats-auth' }, 'Who'), auth),
      h('div', { class: 'field' }, h('label', { for: 'stats-from' }, 'From'), from),
      h('div', { class: 'field' }, h('label', { for: 'stats-to' }, 'To'), to),
      h('div', { class: 'field' }, h('label', { for: 'stats-zone' }, 'Time zone'), zone, zones),
      h('div', { class: 'field' }, h('label', { for: 'stats-models' }, 'Models'), models),
      h('div', { class: 'field' }, principalLabel, principals),
      h('fieldset', { class: 'field' }, h('legend', {}, 'Group by'), groups),
      h('div', { class: 'field actions' }, csv),
    ),
    errors.el,
    summary,
    h('div', { class: 'table-wrap' }, table),
  );
  load();
}
