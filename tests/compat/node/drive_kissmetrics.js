// Makes each kind of call that the npm package kissmetrics 0.0.4 offers,
// against a tracking server: node drive_kissmetrics.js HOST PORT API_KEY TAG
// Prints one JSON line per HTTP response. The calls expected on the wire are
// listed in tests/test_compat_clients.py.
const { runInSequence } = require('./watch_responses');
const KISSmetrics = require('kissmetrics');

const [host, port, key, tag] = process.argv.slice(2);
const km = new KISSmetrics({ key, host, port: Number(port) }); // always http
const erin = `${tag}-erin`;

runInSequence([
  (cb) => km.record(erin, 'Signed Up', { Plan: 'Pro' }, cb),
  (cb) => km.event(erin, 'Viewed Page', { 'Page Name': 'Prices ✓', _t: 1700000000, _d: 1 }, cb),
  (cb) => km.set(erin, { Gender: 'F', Age: 31 }, cb),
  (cb) => km.properties(erin, { Country: 'NZ' }, cb),
  (cb) => km.alias(erin, `${tag}-erin@example.com`, cb),
  (cb) => km.alias(erin, [`${tag}-erin-2`, `${tag}-erin-3`], cb),
]);
