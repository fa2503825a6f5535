// Wires GraphiQL to modelfleet: HTTP to /graphql, subscriptions over a
// WebSocket to the same path, and the bearer token kept in localStorage.
// A token returned by signup, login or startAnonymousSession is picked up.
(function () {
  'use strict';
  var KEY = 'modelfleet.token';
  var input = document.getElementById('token');
  var url = new URL('/graphql', window.location.href);
  var wsUrl = url.href.replace(/^http/, 'ws');

  function token() { return window.localStorage.getItem(KEY) || ''; }
  function setToken(value) {
    if (value) { window.localStorage.setItem(KEY, value); } else { window.localStorage.removeItem(KEY); }
    input.value = value || '';
  }
  input.value = token();
  input.addEventListener('change', function () { setToken(input.value.trim()); });
  document.getElementById('clear').addEventListener('click', function () { setToken(''); });

  // The headers each call carries (with the token, see fetcher below) are
  // also what GraphiQL sends in a WebSocket's connection_init payload.
  var base = GraphiQL.createFetcher({ url: url.href, subscriptionUrl: wsUrl });

  function remember(result) {
    var data = result && result.data;
    if (!data) { return; }
    ['signup', 'login', 'startAnonymousSession', 'refreshSession'].forEach(function (field) {
      if (data[field] && data[field].token) { setToken(data[field].token); }
    });
    if (data.logout === true) { setToken(''); }
  }

  function fetcher(params, opts) {
    opts = opts || {};
    var headers = Object.assign({}, opts.headers || {});
    if (token() && !headers.Authorization && !headers.authorization) {
      headers.Authorization = 'Bearer ' + token();
    }
    var result = base(params, Object.assign({}, opts, { headers: headers }));
    if (result && typeof result.then === 'function') {
      return result.then(function (value) { remember(value); return value; });
    }
    return result;
  }

  var defaultQuery = [
    '# Start an anonymous session; its token is kept for the calls that follow.',
    'mutation Start {',
    '  startAnonymousSession { token expiresAt viewer { id authType } }',
    '}',
    '',
    'query Me {',
    '  me { id authType username roles permissions sessionExpiresAt }',
    '}',
    '',
  ].join('\n');

  // A link may bring an operation to run: /graphiql?query=...&variables=...
  var params = new URLSearchParams(window.location.search);
  var props = { fetcher: fetcher, defaultQuery: defaultQuery };
  if (params.get('query')) { props.query = params.get('query'); }
  if (params.get('variables')) { props.variables = params.get('variables'); }

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, props));
})();
