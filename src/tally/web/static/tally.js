// Tally's dashboard: the report form edits the JSON body in its text box
// (which is what the form sends, as ?q=), charts from the embedded answer, and
// confirmations before a revocation or a deletion. Everything works without
// it except the charts.
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // -- the report form ------------------------------------------------------------
  var form = document.getElementById("report-form");
  var box = document.getElementById("q");
  function parts(path) {
    return path.replace(/\[(\d+)\]/g, ".$1").split(".").map(function (p) {
      return /^\d+$/.test(p) ? Number(p) : p;
    });
  }
  function getPath(obj, path) {
    return parts(path).reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }
  function setPath(obj, path, value) {
    var keys = parts(path), o = obj;
    for (var i = 0; i < keys.length - 1; i++) {
      if (o[keys[i]] == null || typeof o[keys[i]] !== "object") {
        o[keys[i]] = typeof keys[i + 1] === "number" ? [] : {};
      }
      o = o[keys[i]];
    }
    var last = keys[keys.length - 1];
    if (value === undefined) { if (Array.isArray(o)) o[last] = undefined; else delete o[last]; }
    else o[last] = value;
  }
  function tidy(body) {
    if (Array.isArray(body.steps)) {
      body.steps = body.steps.filter(function (s) { return s && s.event; });
    }
    if (body.segment && !body.segment.property) delete body.segment;
    return body;
  }
  if (form && box) {
    var body;
    try { body = JSON.parse(box.value); } catch (e) { body = null; }
    var inputs = form.querySelectorAll("[data-path]");
    if (body) {
      inputs.forEach(function (input) {
        var v = getPath(body, input.dataset.path);
        if (v !== undefined && v !== null) input.value = v;
      });
    }
    var preset = document.getElementById("preset");
    if (preset && body) {
      Array.prototype.forEach.call(preset.options, function (o) {
        if (o.dataset.from === body.from && o.dataset.to === body.to) preset.value = o.value;
      });
    }
    function update() {
      var current;
      try { current = JSON.parse(box.value); } catch (e) { return; }
      inputs.forEach(function (input) {
        var raw = input.value.trim();
        var value = raw === "" ? undefined : (input.type === "number" ? Number(raw) : raw);
        setPath(current, input.dataset.path, value);
      });
      box.value = JSON.stringify(tidy(current), null, 2);
    }
    inputs.forEach(function (input) {
      input.addEventListener("input", function () {
        if ((input.dataset.path === "from" || input.dataset.path === "to") && preset) {
          preset.value = "custom";
        }
        update();
      });
    });
    if (preset) {
      preset.addEventListener("change", function () {
        var o = preset.options[preset.selectedIndex];
        if (!o.dataset.from) return;
        document.getElementById("f-from").value = o.dataset.from;
        document.getElementById("f-to").value = o.dataset.to;
        update();
      });
    }
    form.addEventListener("submit", function (event) {
      // The URL holds the whole definition, compact: ?q=<the JSON body>.
      event.preventDefault();
      update();
      var text = box.value;
      try { text = JSON.stringify(JSON.parse(text)); } catch (e) { /* sent as typed: the page says what is wrong */ }
      window.location.assign(form.action + "?q=" + encodeURIComponent(text));
    });
  }

  // -- charts ---------------------------------------------------------------------
  var data = document.getElementById("report-data");
  var chart = document.getElementById("chart");
  if (!data || !chart || !form || !window.Plotly) return;
  var answer = JSON.parse(data.textContent);
  var kind = form.dataset.kind;
  var layout = { margin: { t: 20, r: 10, b: 60, l: 50 }, legend: { orientation: "h" },
                 font: { family: "system-ui, sans-serif" } };
  var traces = [];
  function x(series) { return series.map(function (p) { return p.start; }); }
  if (kind === "metrics") {
    traces.push({ x: x(answer.series), y: answer.series.map(function (p) { return p.value; }),
                  name: "All", type: "scatter", mode: "lines+markers" });
    (answer.segments || []).forEach(function (s) {
      traces.push({ x: x(s.series), y: s.series.map(function (p) { return p.value; }),
                    name: String(s.value), type: "scatter", mode: "lines+markers" });
    });
  } else if (kind === "funnel") {
    var groups = [{ value: "All", steps: answer.steps }].concat(answer.segments || []);
    groups.forEach(function (g) {
      traces.push({ type: "bar", name: String(g.value),
                    x: g.steps.map(function (s, i) { return (i + 1) + ". " + s.event; }),
                    y: g.steps.map(function (s) { return s.people; }),
                    text: g.steps.map(function (s) {
                      return s.conversion_from_first == null ? "" : Math.round(s.conversion_from_first * 100) + "%";
                    }), textposition: "auto" });
    });
    layout.barmode = "group";
  } else if (kind === "cohort") {
    traces.push({ type: "heatmap", colorscale: "Blues", reversescale: true,
                  y: answer.cohorts.map(function (c) { return c.start; }),
                  x: (answer.cohorts[0] || { values: [] }).values.map(function (_, k) { return "Bucket " + k; }),
                  z: answer.cohorts.map(function (c) { return c.percentages; }) });
  } else if (kind === "revenue") {
    ["revenue", "paying", "new", "churned"].forEach(function (field) {
      traces.push({ x: x(answer.series), y: answer.series.map(function (p) { return p[field]; }),
                    name: field, type: "scatter", mode: "lines+markers",
                    yaxis: field === "revenue" ? "y" : "y2" });
    });
    layout.yaxis2 = { overlaying: "y", side: "right", title: "people" };
  } else if (kind === "abtest") {
    traces.push({ type: "bar", x: answer.variants.map(function (v) {
                    return v.name + (v.name === answer.winner ? " (winner)" : ""); }),
                  y: answer.variants.map(function (v) { return v.rate; }), name: "rate" });
  } else if (kind === "path") {
    var paths = answer.paths.slice(0, 15).reverse();
    traces.push({ type: "bar", orientation: "h", y: paths.map(function (p) {
                    return p.steps.join(" → ") || "(direct)"; }),
                  x: paths.map(function (p) { return p.people; }) });
    layout.margin.l = 240;
  }
  window.Plotly.newPlot(chart, traces, layout, { responsive: true, displaylogo: false });
})();
