// Sign-in with a username (or email) and password.

import { h, errorBox } from '../dom.js';
import * as session from '../session.js';

export const title = 'Sign in';
export const permission = null;

export function render(main, { params, navigate }) {
  const errors = errorBox();
  const login = h('input', { id: 'login', name: 'login', autocomplete: 'username', required: true });
  const password = h('input', {
    id: 'password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const reason = session.endedReason();
  const viewer = session.currentViewer();

  async function onsubmit(event) {
    event.preventDefault();
    errors.clear();
    submit.disabled = true;
    try {
      await session.signIn(login.value.trim(), password.value);
      const next = params.get('next');
      // Only paths inside the console: never an address elsewhere.
      const target = next && next.startsWith('/') && !next.startsWith('//') ? new URL(next, window.location.origin) : null;
      navigate(target ? target.pathname : '/', target ? target.searchParams : null, { replace: true });
    } catch (error) {
      errors.show(error);
      password.select();
    } finally {
      submit.disabled = false;
    }
  }

  main.append(
    h(
      'section',
      { class: 'signin' },
      h('h1', {}, 'Sign in to modelfleet'),
      reason ? h('p', { class: 'notice', role: 'status', id: 'signin-reason' }, reason) : null,
      viewer ? h('p', { class: 'notice' }, `You are signed in as ${viewer.username || 'an anonymous session'}.`) : null,
      h(
        'form',
        { onsubmit, class: 'stack' },
        h('label', { for: 'login' }, 'Username or email'),
        login,
        h('label', { for: 'password' }, 'Password'),
        password,
        errors.el,
        submit,
      ),
      h(
        'p',
        { class: 'hint' },
        'The console is for administrators. An account becomes one with ',
        h('code', {}, 'modelfleet user create --admin'),
        ' or ',
        h('code', {}, 'modelfleet user promote'),
        '.',
      ),
    ),
  );
  login.focus();
}
