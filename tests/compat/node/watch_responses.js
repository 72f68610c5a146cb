// Collects every HTTP response this process receives, whatever library made
// the request, through Node's http diagnostics channel (Node >= 18.13): neither
// npm client hands its callback the response bytes, and kissmetrics' alias
// hands it no response at all.
const diagnostics = require('node:diagnostics_channel');

const responses = [];
diagnostics.subscribe('http.client.response.finish', ({ response }) => {
  responses.push({
    status: response.statusCode,
    content_type: response.headers['content-type'],
    content_length: response.headers['content-length'],
  });
});

// Runs the calls one after another; each is a function taking a callback(err).
function runInSequence(calls) {
  const next = (i) => {
    if (i === calls.length) {
      responses.forEach((r) => console.log(JSON.stringify(r)));
      return;
    }
    calls[i]((err) => {
      if (err) {
        console.error(`call ${i} failed:`, err);
        process.exit(1);
      }
      next(i + 1);
    });
  };
  next(0);
}

module.exports = { runInSequence };
