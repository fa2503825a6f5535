// Builds DOM nodes. Text always goes in as text nodes, never as HTML, so
// nothing the API returns can become markup.

/**
 * `h('button', { class: 'primary', onclick: fn }, 'Stop')`. Attributes
 * starting with `on` become listeners; `null`, `undefined` and `false`
 * attributes and children are skipped; arrays of children are flattened.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (name === 'value' || name === 'checked' || name === 'selected') {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A box that shows an error where it happened, or nothing. */
export function errorBox() {
  const box = h('div', { class: 'error', role: 'alert', hidden: true });
  return {
    el: box,
    show(error) {
      replace(box, error && error.message ? error.message : String(error));
      box.hidden = false;
    },
    clear() {
      replace(box);
      box.hidden = true;
    },
  };
}

/** The values of a `<select>`'s chosen options. */
export function selected(select) {
  return Array.from(select.selectedOptions, (o) => o.value);
}

/** Whether the server serves the GraphiQL playground (it says so in the page). */
export function playground() {
  return document.documentElement.dataset.playground === 'on';
}

/**
 * A page's filters, folded away under "Filters" on a narrow screen (where
 * they would fill it) and open elsewhere. Changes apply as they are made.
 */
export function filters(...fields) {
  const narrow = window.matchMedia('(max-width: 760px)');
  const box = h(
    'details',
    { class: 'filter-box', open: !narrow.matches },
    h('summary', {}, 'Filters'),
    h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() }, fields),
  );
  // A window widened past the narrow layout has no summary to click.
  narrow.addEventListener('change', (e) => {
    if (!e.matches) box.open = true;
  });
  return box;
}
