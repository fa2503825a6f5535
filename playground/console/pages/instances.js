// Live instances: the `instances` query for the first view, then every
// change from the `instanceUpdates` subscription; a chosen instance's raw
// events; stopping one after a confirmation.

import { gql, subscribe } from '../api.js';
import { h, playground, replace, errorBox, selected, filters } from '../dom.js';
import { instant, shortId } from '../format.js';

export const title = 'Instances';
export const permission = 'MANAGE_INSTANCES';

const STATUSES = ['PENDING', 'STARTING', 'READY', 'BUSY', 'STOPPING', 'STOPPED', 'FAILED'];
const ENDED = new Set(['STOPPED', 'FAILED']);
const FIELDS = 'id modelId backend handle node status statusDetail startedAt readyAt stoppedAt stopReason requestId';
const EVENT = 'at type reason message raw';
// Fetched 50 at a time: the most the server's complexity limit allows
// with these fields.
const LIST = `query Instances($filter: InstanceFilter, $after: String) {
  instances(filter: $filter, first: 50, after: $after) { nodes { ${FIELDS} } pageInfo { hasNextPage endCursor } }
}`;
// Enough for a screen; the history of stopped ones can be far longer.
const MOST_LISTED = 1000;
const UPDATES = `subscription InstanceUpdates($filter: InstanceFilter) {
  instanceUpdates(filter: $filter) { kind at missed instance { ${FIELDS} } event { ${EVENT} } }
}`;
const EVENTS = `query InstanceEvents($id: ID!) { instance(id: $id) { id events(limit: 200) { ${EVENT} } } }`;
const STOP = `mutation StopInstance($id: ID!, $reason: String) {
  stopInstance(id: $id, reason: $reason) { alreadyStopped message instance { ${FIELDS} } }
}`;
const MODELS = 'query Models { models(includeDisabled: true) { id enabled } }';

/** `datetime-local` value (browser time) ↔ RFC 3339 instant. */
function toInstant(local) {
  const t = local ? new Date(local) : null;
  return t && !Number.isNaN(t.getTime()) ? t.toISOString() : null;
}

/**
 * An event's message as a person reads it. A model server's structured log
 * line (JSON with `fields.message`, as Cog's is) shows its level and
 * message; the whole line stays one click away.
 */
function readable(message) {
  if (!message.startsWith('{')) return { text: message, line: null };
  try {
    const parsed = JSON.parse(message);
    const text = parsed && parsed.fields && parsed.fields.message;
    if (typeof text !== 'string') return { text: message, line: null };
    return { text: parsed.level ? `${parsed.level} ${text}` : text, line: parsed };
  } catch {
    return { text: message, line: null };
  }
}

/** A status detail in one line: the parts an operator reads first. */
function detailText(detail) {
  if (detail === null || detail === undefined) return '';
  if (typeof detail !== 'object') return String(detail);
  return Object.entries(detail)
    .filter(([, v]) => v !== null && typeof v !== 'object')
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ');
}

export function render(main, { params, setParams }) {
  const view = {
    models: params.getAll('model'),
    statuses: params.getAll('status'),
    startedFrom: params.get('startedFrom') || '',
    startedTo: params.get('startedTo') || '',
    stopped: params.get('stopped') === '1',
  };
  const instances = new Map();
  let chosen = null;
  let chosenEvents = [];
  let closeUpdates = null;
  let generation = 0;
  let arrivedDuringReload = null;
  // Live events of the chosen instance that came while its list loaded.
  let eventsDuringLoad = null;
  const errors = errorBox();
  const eventErrors = errorBox();

  const models = h('select', { id: 'instances-models', multiple: true, size: 4 });
  const statuses = h(
    'select',
    { id: 'instances-statuses', multiple: true, size: 4 },
    STATUSES.map((s) => h('option', { value: s, selected: view.statuses.includes(s) }, s.toLowerCase())),
  );
  const startedFrom = h('input', { id: 'instances-from', type: 'datetime-local', value: view.startedFrom });
  const startedTo = h('input', { id: 'instances-to', type: 'datetime-local', value: view.startedTo });
  const stopped = h('input', { id: 'instances-stopped', type: 'checkbox', checked: view.stopped });
  const live = h('span', { class: 'live', id: 'instances-live' }, 'connecting…');
  const graphiql = h('a', { id: 'instances-graphiql', target: '_blank', rel: 'noopener' }, 'Run this subscription in GraphiQL ↗');
  const notice = h('p', { class: 'notice', id: 'instances-notice', role: 'status', hidden: true });
  const truncated = h(
    'p',
    { class: 'hint', hidden: true },
    `Only the newest ${MOST_LISTED} instances are listed; narrow the filter to see older ones.`,
  );
  const table = h('table', { id: 'instances-table', class: 'data' });
  const events = h('section', { class: 'events', id: 'instance-events', hidden: true });

  const reason = h('input', { id: 'stop-reason', placeholder: 'optional' });
  const stopText = h('p', { id: 'stop-text' });
  const confirmStop = h('button', { type: 'submit', class: 'danger', id: 'stop-confirm', value: 'stop' }, 'Stop instance');
  const dialog = h(
    'dialog',
    { id: 'stop-dialog', 'aria-labelledby': 'stop-title' },
    h(
      'form',
      { method: 'dialog', class: 'stack' },
      h('h2', { id: 'stop-title' }, 'Stop this instance?'),
      stopText,
      h('label', { for: 'stop-reason' }, 'Reason (recorded with the stop)'),
      reason,
      h(
        'div',
        { class: 'buttons' },
        h('button', { type: 'submit', value: 'cancel', id: 'stop-cancel' }, 'Keep it running'),
        confirmStop,
      ),
    ),
  );

  function writeView() {
    const out = new URLSearchParams();
    view.models.forEach((m) => out.append('model', m));
    view.statuses.forEach((s) => out.append('status', s));
    if (view.startedFrom) out.set('startedFrom', view.startedFrom);
    if (view.startedTo) out.set('startedTo', view.startedTo);
    if (view.stopped) out.set('stopped', '1');
    setParams(out);
    const playground = new URLSearchParams({ query: UPDATES, variables: JSON.stringify({ filter: serverFilter(false) }, null, 2) });
    graphiql.href = `/graphiql?${playground}`;
  }

  /** What the server filters on; statuses are applied here, so that an
   * instance leaving a chosen status is seen leaving. */
  function serverFilter(forList) {
    const f = {};
    if (view.models.length) f.modelIds = view.models;
    const from = toInstant(view.startedFrom);
    const to = toInstant(view.startedTo);
    if (from) f.startedFrom = from;
    if (to) f.startedTo = to;
    if (forList) f.includeStopped = view.stopped;
    return f;
  }

  /** Keeps the newest state known. An ended instance never comes back, so
   * a state older than its end (a mutation's answer arriving after the
   * subscription's STOPPED, or a list taken just before) is dropped. */
  function remember(instance) {
    const known = instances.get(instance.id);
    if (known && ENDED.has(known.status) && !ENDED.has(instance.status)) return false;
    if (known && JSON.stringify(known) === JSON.stringify(instance)) return false;
    instances.set(instance.id, instance);
    return true;
  }

  function visible(instance) {
    if (!view.stopped && ENDED.has(instance.status)) return false;
    return view.statuses.length === 0 || view.statuses.includes(instance.status);
  }

  function actions(i) {
    return h(
      'td',
      { class: 'actions' },
      h(
        'div',
        { class: 'buttons' },
        h('button', { type: 'button', class: 'events-button', onclick: () => choose(i.id) }, 'Events'),
        h(
          'button',
          {
            type: 'button',
            class: 'stop-button danger',
            disabled: ENDED.has(i.status) || i.status === 'STOPPING',
            onclick: () => askStop(i),
          },
          'Stop',
        ),
      ),
    );
  }

  function row(i) {
    const detail = detailText(i.statusDetail);
    return h(
      'tr',
      { dataset: { id: i.id, status: i.status }, class: chosen === i.id ? 'chosen' : null },
      // The buttons come first, so a wide row never hides them.
      actions(i),
      h('td', { class: 'text' }, i.modelId),
      h('td', { class: 'text' }, instant(i.startedAt)),
      h('td', { class: 'text' }, h('span', { class: `status ${i.status.toLowerCase()}` }, i.status.toLowerCase())),
      h(
        'td',
        { class: 'text detail', title: [detail, i.stopReason].filter(Boolean).join(' · ') },
        [detail, i.stopReason ? ` (${i.stopReason})` : ''].join(''),
      ),
      h('td', { class: 'text mono request', title: i.requestId || '', dataset: { request: i.requestId || '' } }, shortId(i.requestId)),
      h('td', { class: 'text mono' }, `${i.backend} ${i.handle || ''}`),
      h('td', { class: 'text mono', title: i.id }, shortId(i.id)),
    );
  }

  function draw() {
    const rows = Array.from(instances.values())
      .filter(visible)
      .sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0));
    const head = h(
      'thead',
      {},
      h(
        'tr',
        {},
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')),
        ['Model', 'Started', 'Status', 'Detail', 'Request', 'Handle', 'Id'].map((c) => h('th', { scope: 'col', class: 'text' }, c)),
      ),
    );
    const body = h(
      'tbody',
      {},
      rows.length === 0 ? h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No instance matches.')) : rows.map(row),
    );
    replace(table, head, body);
  }

  function drawEvents() {
    if (!chosen) {
      events.hidden = true;
      return;
    }
    const instance = instances.get(chosen);
    events.hidden = false;
    replace(
      events,
      h(
        'header',
        {},
        h('h2', {}, `Events of ${instance ? instance.modelId : 'instance'} ${shortId(chosen)}`),
        h('button', { type: 'button', id: 'events-close', onclick: () => choose(null) }, 'Close'),
      ),
      eventErrors.el,
      chosenEvents.length === 0
        ? h('p', { class: 'empty' }, 'No events yet.')
        : h(
            'ol',
            { class: 'event-list' },
            chosenEvents.map((e) => {
              const { text, line } = readable(e.message);
              return h(
                'li',
                { class: e.type === 'WARNING' ? 'warning' : null },
                h('span', { class: 'when' }, instant(e.at)),
                ' ',
                h('strong', {}, e.reason),
                ' ',
                h('span', {}, text),
                line ? h('details', {}, h('summary', {}, 'log line'), h('pre', {}, JSON.stringify(line, null, 2))) : null,
                e.raw === null || e.raw === undefined
                  ? null
                  : h('details', { class: 'raw' }, h('summary', {}, 'raw event'), h('pre', {}, JSON.stringify(e.raw, null, 2))),
              );
            }),
          ),
    );
  }

  async function choose(id) {
    chosen = id;
    chosenEvents = [];
    eventErrors.clear();
    draw();
    drawEvents();
    if (!id) return;
    const live = [];
    eventsDuringLoad = live;
    try {
      const data = await gql(EVENTS, { id });
      if (chosen !== id) return;
      const listed = data.instance ? data.instance.events : [];
      const key = (e) => `${e.at} ${e.reason} ${e.message}`;
      const seen = new Set(listed.map(key));
      // Newest first, as the server lists them.
      chosenEvents = [...live.filter((e) => !seen.has(key(e))).reverse(), ...listed];
      drawEvents();
      events.scrollIntoView({ block: 'nearest' });
    } catch (error) {
      if (chosen === id) eventErrors.show(error);
    } finally {
      if (eventsDuringLoad === live) eventsDuringLoad = null;
    }
  }

  function askStop(instance) {
    replace(
      stopText,
      `Instance ${shortId(instance.id)} of ${instance.modelId} will be stopped. `,
      instance.requestId ? `The request it runs (${shortId(instance.requestId)}) goes back to the queue.` : 'It runs no request now.',
    );
    reason.value = '';
    dialog.returnValue = '';
    dialog.onclose = async () => {
      if (dialog.returnValue !== 'stop') return;
      errors.clear();
      try {
        const data = await gql(STOP, { id: instance.id, reason: reason.value.trim() || null });
        const payload = data.stopInstance;
        remember(payload.instance);
        notice.textContent = `Instance ${shortId(instance.id)} of ${instance.modelId}: ${payload.message}${
          payload.alreadyStopped ? '' : '. A request it ran goes back to the queue.'
        }`;
        notice.hidden = false;
        draw();
      } catch (error) {
        errors.show(error);
      }
    };
    dialog.showModal();
  }

  async function reload() {
    const mine = ++generation;
    // Changes that arrive while the list is on its way may be newer than
    // it: they are put back on top of it.
    const arrived = new Map();
    arrivedDuringReload = arrived;
    errors.clear();
    try {
      const found = [];
      let after = null;
      do {
        const data = await gql(LIST, { filter: serverFilter(true), after });
        if (mine !== generation) return;
        found.push(...data.instances.nodes);
        after = data.instances.pageInfo.hasNextPage ? data.instances.pageInfo.endCursor : null;
      } while (after && found.length < MOST_LISTED);
      // An instance seen ending stays ended over a list taken a moment
      // before its end.
      const previous = new Map(instances);
      instances.clear();
      for (const i of found) {
        const known = previous.get(i.id);
        instances.set(i.id, known && ENDED.has(known.status) && !ENDED.has(i.status) ? known : i);
      }
      for (const i of arrived.values()) remember(i);
      if (arrivedDuringReload === arrived) arrivedDuringReload = null;
      truncated.hidden = !after;
      draw();
    } catch (error) {
      if (mine === generation) errors.show(error);
    }
  }

  function listen() {
    if (closeUpdates) closeUpdates();
    closeUpdates = subscribe(
      UPDATES,
      { filter: serverFilter(false) },
      {
        // Listed once the subscription is open, and again after every
        // reconnection: nothing that changed in between is missed.
        onOpen: () => {
          live.textContent = 'live';
          live.classList.add('on');
          reload();
        },
        onError: (error) => {
          live.textContent = 'interrupted';
          live.classList.remove('on');
          errors.show(error);
        },
        onData: (data) => {
          const update = data.instanceUpdates;
          if (update.kind === 'RESYNC') {
            reload();
            return;
          }
          let redraw = false;
          if (update.instance) {
            if (arrivedDuringReload) arrivedDuringReload.set(update.instance.id, update.instance);
            redraw = remember(update.instance);
          }
          if (update.kind === 'EVENT' && update.event && update.instance && update.instance.id === chosen) {
            if (eventsDuringLoad) eventsDuringLoad.push(update.event);
            chosenEvents = [update.event, ...chosenEvents];
            drawEvents();
          }
          // Redrawn only when something shown changed: an instance's output
          // lines arrive as events many times a second.
          if (redraw) draw();
        },
      },
    );
  }

  function fromForm() {
    view.models = selected(models);
    view.statuses = selected(statuses);
    view.startedFrom = startedFrom.value;
    view.startedTo = startedTo.value;
    view.stopped = stopped.checked;
    writeView();
    if (view.startedFrom && view.startedTo && view.startedFrom > view.startedTo) {
      closeUpdates();
      instances.clear();
      draw();
      errors.show('"Started from" is after "Started to": no instance can match.');
      return;
    }
    listen();
    reload();
  }
  for (const input of [models, statuses, startedFrom, startedTo, stopped]) input.addEventListener('change', fromForm);

  main.append(
    h('h1', {}, 'Instances ', live),
    filters(
      h('div', { class: 'field' }, h('label', { for: 'instances-models' }, 'Models'), models),
      h('div', { class: 'field' }, h('label', { for: 'instances-statuses' }, 'Statuses'), statuses),
      h('div', { class: 'field' }, h('label', { for: 'instances-from' }, 'Started from'), startedFrom),
      h('div', { class: 'field' }, h('label', { for: 'instances-to' }, 'Started to'), startedTo),
      h('div', { class: 'field' }, h('label', { class: 'check' }, stopped, 'Show stopped instances')),
    ),
    errors.el,
    notice,
    h('div', { class: 'table-wrap' }, table),
    truncated,
    playground() ? h('p', { class: 'hint' }, graphiql) : null,
    events,
    dialog,
  );

  // The chosen models first, so the filter holds even before (or without)
  // the list of every model.
  models.append(...view.models.map((id) => h('option', { value: id, selected: true }, id)));
  gql(MODELS)
    .then((data) => {
      const chosenModels = new Set(selected(models));
      replace(models, data.models.map((m) => h('option', { value: m.id, selected: chosenModels.has(m.id) }, m.id)));
    })
    .catch((error) => errors.show(error));
  writeView();
  listen();
  reload();
  return () => {
    if (closeUpdates) closeUpdates();
    if (dialog.open) dialog.close();
  };
}
