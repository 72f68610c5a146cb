// Makes each kind of call that the npm package kissmymetrics 0.1.1 offers,
// against a tracking server: node drive_kissmymetrics.js BASE_URL API_KEY TAG
// Prints one JSON line per HTTP response. The calls expected on the wire are
// listed in tests/test_compat_clients.py.
const { runInSequence } = require('./watch_responses');
const KissMyMetrics = require('kissmymetrics');

const [endpoint, key, tag] = process.argv.slice(2);
const km = new KissMyMetrics({ key, endpoint }); // endpoint: scheme://host:port
const kmTimed = new KissMyMetrics({ key, endpoint, allowManualTimestamp: true });
const frank = `${tag}-frank`;

runInSequence([
  (cb) => km.event(frank, 'Signed Up', { Plan: 'Pro' }, cb),
  (cb) => km.event(frank, 'Logged In', cb),
  (cb) => km.event(frank, 'Viewed Page', { 'Page Name': 'Q&A ✓', _t: 1700000000 }, cb),
  (cb) => kmTimed.event(frank, 'Purchased', { Amount: '9.99', _t: 1700000000 }, cb),
  (cb) => km.set(frank, { Gender: 'F', Age: 31 }, cb),
  (cb) => kmTimed.set(frank, { Country: 'NZ', _t: 1700000000 }, cb),
  (cb) => km.alias(frank, `${tag}-frank@example.com`, cb),
  (cb) => km.alias(frank, [`${tag}-frank-2`, `${tag}-frank-3`], cb),
]);
