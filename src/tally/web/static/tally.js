// Tally's dashboard: the report form edits the JSON body in its text box
// (which is what the form sends, as ?q=) and the text box edits the form; the
// people search's conditions and columns are rows of the form; charts from the
// embedded answer; confirmations before a revocation or a deletion. Without
// it, the text box alone edits a report, and there are no charts.
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
    (Array.isArray(body.conditions) ? body.conditions : []).forEach(function (c) {
      if (c && c.count && !c.count.op) delete c.count;
    });
    return body;
  }
  // A row nobody has named yet is nothing chosen: it is left out of the report
  // run, as an empty funnel step is.
  function named(item) {
    return item && (item.type === "identity" ? item.value : (item.event || item.property));
  }
  function withoutEmptyRows(body) {
    ["conditions", "columns"].forEach(function (list) {
      if (Array.isArray(body[list])) body[list] = body[list].filter(named);
    });
    return body;
  }

  // -- the people search's rows ------------------------------------------------------
  // Each row shows one item of the body's `conditions` or `columns`
  // (docs/reports.md, "people"); its fields carry a data-path such as
  // "conditions[0].event", so the form's one sync (update and fill) covers them,
  // and what a row has no field for (a condition's `where`, `from`, `to`) stays
  // in the body as it was. Adding, removing or changing a row's kind edits the
  // body, then the rows are drawn again from it.
  var OPS = [["equals", "equals"], ["not_equals", "does not equal"], ["contains", "contains"],
             ["begins_with", "begins with"], ["ends_with", "ends with"],
             ["has_any_value", "has any value"], ["has_no_value", "has no value"],
             ["gt", "is more than"], ["gte", "is at least"], ["lt", "is less than"],
             ["lte", "is at most"]];
  var NUMBER_OPS = ["gt", "gte", "lt", "lte"], PRESENCE_OPS = ["has_any_value", "has_no_value"];
  var FRESH = {
    conditions: { event: { type: "event", event: "", did: true },
                  property: { type: "property", property: "", op: "equals" },
                  identity: { type: "identity", op: "contains" } },
    columns: { property: { type: "property", property: "", which: "last" },
               event: { type: "event", event: "", which: "count" } }
  };
  function control(tag, path, attrs, options) {
    var el = document.createElement(tag);
    el.id = "f-" + path;
    el.dataset.path = path;
    Object.keys(attrs || {}).forEach(function (k) {
      if (k.indexOf("data-") === 0) el.dataset[k.slice(5)] = attrs[k]; else el.setAttribute(k, attrs[k]);
    });
    (options || []).forEach(function (o) {
      var option = document.createElement("option");
      option.value = o[0];
      option.textContent = o[1];
      el.appendChild(option);
    });
    return el;
  }
  function labelled(label, el, hidden) {
    var div = document.createElement("div"), l = document.createElement("label");
    div.className = "field";
    l.htmlFor = el.id;
    l.textContent = label;
    div.appendChild(l);
    div.appendChild(el);
    div.hidden = !!hidden;
    return div;
  }
  function conditionFields(i, c) {
    var at = "conditions[" + i + "].", n = "Condition " + (i + 1);
    var fields = [labelled(n + " is about", control("select", at + "type", { "data-redraw": "kind" },
      [["event", "an event"], ["property", "a property"], ["identity", "an identity"]]))];
    if (c.type === "event") {
      // A count goes with "did" only (the API refuses one with did: false).
      var did = c.did !== false, counted = did && !!(c.count && c.count.op);
      fields.push(
        labelled(n + ": did or did not", control("select", at + "did",
          { "data-type": "bool", "data-default": "true", "data-redraw": "" },
          [["true", "did"], ["false", "did not"]])),
        labelled(n + ": event", control("input", at + "event", { list: "event-names", autocomplete: "off" })),
        labelled(n + ": how many times", control("select", at + "count.op", { "data-redraw": "" },
          [["", "any number of times"], ["at_least", "at least"], ["at_most", "at most"],
           ["exactly", "exactly"]]), !did),
        labelled(n + ": times", control("input", at + "count.value", { type: "number", min: "0" }),
                 !counted));
    } else if (c.type === "property") {
      var numeric = NUMBER_OPS.indexOf(c.op) >= 0;
      fields.push(
        labelled(n + ": property", control("input", at + "property",
          { list: "property-names", autocomplete: "off" })),
        labelled(n + ": test", control("select", at + "op", { "data-redraw": "" }, OPS)),
        labelled(n + ": value", control("input", at + "value",
          numeric ? { type: "number", step: "any" } : { autocomplete: "off" }),
          PRESENCE_OPS.indexOf(c.op) >= 0));
    } else {
      fields.push(labelled(n + ": identity contains",
                           control("input", at + "value", { autocomplete: "off" })));
    }
    return fields;
  }
  function columnFields(i, c) {
    var at = "columns[" + i + "].", n = "Column " + (i + 1);
    var event = c.type === "event";
    return [
      labelled(n + " shows", control("select", at + "type", { "data-redraw": "kind" },
        [["property", "a property"], ["event", "an event"]])),
      labelled(n + (event ? ": event" : ": property"), control("input", at + (event ? "event" : "property"),
        { list: event ? "event-names" : "property-names", autocomplete: "off" })),
      labelled(n + ": which", control("select", at + "which",
        { "data-default": event ? "count" : "current" },
        event ? [["count", "how many times"], ["first_time", "first time"], ["last_time", "last time"]]
              : [["first", "first value"], ["last", "last value"], ["current", "current value"]]))
    ];
  }
  function drawRows(body) {
    document.querySelectorAll("[data-list]").forEach(function (set) {
      var list = set.dataset.list, ol = set.querySelector("ol");
      var items = Array.isArray(body && body[list]) ? body[list] : [];
      ol.textContent = "";
      items.forEach(function (item, i) {
        if (!item || typeof item !== "object") return;
        var li = document.createElement("li");
        (list === "conditions" ? conditionFields : columnFields)(i, item).forEach(function (f) {
          li.appendChild(f);
        });
        var remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove";
        remove.dataset.remove = list;
        remove.dataset.index = String(i);
        remove.textContent = "Remove " + (list === "conditions" ? "condition " : "column ") + (i + 1);
        li.appendChild(remove);
        ol.appendChild(li);
      });
    });
  }

  if (form && box) {
    var body;
    try { body = JSON.parse(box.value); } catch (e) { body = null; }
    var preset = document.getElementById("preset");
    function fill(body) {
      form.querySelectorAll("[data-path]").forEach(function (input) {
        var v = getPath(body, input.dataset.path);
        input.value = v === undefined || v === null ? (input.dataset.default || "") : String(v);
      });
      if (!preset) return;
      preset.value = "custom";
      Array.prototype.forEach.call(preset.options, function (o) {
        if (o.dataset.from && o.dataset.from === body.from && o.dataset.to === body.to) {
          preset.value = o.value;
        }
      });
    }
    function show(body) { drawRows(body); fill(body); }
    if (body) show(body);
    // The server puts an error by the text box when the field it names is not
    // in the page it sent: a row drawn here (a condition's event, value…) is.
    var stray = document.getElementById("error-q");
    var named = stray && stray.dataset.field && document.getElementById("f-" + stray.dataset.field);
    if (named) {
      stray.id = "error-" + stray.dataset.field;
      // Under the row, on a line of its own (in a field, it would lift the row's input).
      (named.closest(".rows-list > li") || named.parentNode).appendChild(stray);
      named.setAttribute("aria-invalid", "true");
      named.setAttribute("aria-describedby", stray.id);
      box.removeAttribute("aria-invalid");
      box.removeAttribute("aria-describedby");
    }
    function valueOf(input) {
      var raw = input.value.trim();
      if (raw === "" || input.closest(".field[hidden]")) return undefined;
      if (input.dataset.type === "bool") return raw === "true";
      if (input.type === "number") return isNaN(Number(raw)) ? raw : Number(raw);
      return raw;
    }
    function update() {
      var current;
      try { current = JSON.parse(box.value); } catch (e) { return null; }
      form.querySelectorAll("[data-path]").forEach(function (input) {
        setPath(current, input.dataset.path, valueOf(input));
      });
      box.value = JSON.stringify(tidy(current), null, 2);
      return current;
    }
    // A change that redraws the rows keeps the focus where it was.
    function redraw(body, focusId) {
      box.value = JSON.stringify(tidy(body), null, 2);
      show(body);
      var again = focusId && document.getElementById(focusId);
      if (again) again.focus();
    }
    form.addEventListener("input", function (event) {
      var input = event.target;
      if (!input.dataset || !input.dataset.path) return;
      if ((input.dataset.path === "from" || input.dataset.path === "to") && preset) {
        preset.value = "custom";
      }
      var current = update();
      if (!current || input.dataset.redraw === undefined) return;
      if (input.dataset.redraw === "kind") {
        var keys = parts(input.dataset.path), list = keys[0], i = keys[1];
        current[list][i] = JSON.parse(JSON.stringify(FRESH[list][input.value]));
      }
      redraw(current, input.id);
      update();  // what the redrawn rows hide (a count once "did not") leaves the body
    });
    form.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("button[data-add], button[data-remove]");
      if (!button) return;
      var current = update();
      if (!current) { box.focus(); return; }
      var list = button.dataset.add || button.dataset.remove;
      if (!Array.isArray(current[list])) current[list] = [];
      if (button.dataset.add) {
        var fresh = list === "conditions" ? FRESH.conditions.event : FRESH.columns.property;
        current[list].push(JSON.parse(JSON.stringify(fresh)));
        redraw(current, "f-" + list + "[" + (current[list].length - 1) + "].type");
      } else {
        current[list].splice(Number(button.dataset.index), 1);
        redraw(current, null);
        document.querySelector("button[data-add='" + list + "']").focus();
      }
    });
    // The text box edits the form too: what it says, the fields and rows show.
    box.addEventListener("input", function () {
      var typed;
      try { typed = JSON.parse(box.value); } catch (e) { return; }
      if (typed && typeof typed === "object" && !Array.isArray(typed)) show(typed);
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
      try { text = JSON.stringify(withoutEmptyRows(JSON.parse(text))); } catch (e) { /* sent as typed: the page says what is wrong */ }
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
  // As the tables show them (tally.web.tables: percent, duration).
  function decimal(v, places) { return String(Number(v.toFixed(places))); }
  function percent(rate) { return rate == null ? "\u2013" : decimal(rate * 100, 1) + "%"; }
  function duration(s) {
    if (s == null) return "\u2013";
    function two(count, per, big, small) {
      var low = count % per;
      return Math.floor(count / per) + big + (low ? " " + low + small : "");
    }
    if (s < 59.95) return decimal(s, 1) + "s";
    if (Math.round(s) < 3600) return two(Math.round(s), 60, "m", "s");
    if (Math.round(s / 60) < 1440) return two(Math.round(s / 60), 60, "h", "m");
    return two(Math.round(s / 3600), 24, "d", "h");
  }
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
                      return s.conversion_from_first == null ? "" : percent(s.conversion_from_first);
                    }), textposition: "auto",
                    customdata: g.steps.map(function (s) {
                      return [percent(s.conversion_from_previous), duration(s.median_seconds_from_previous)];
                    }),
                    hovertemplate: "%{y} people, %{text} of step 1<br>%{customdata[0]} of the step before," +
                                   " median time %{customdata[1]}<extra>%{fullData.name}</extra>" });
    });
    layout.barmode = "group";
  } else if (kind === "cohort") {
    traces.push({ type: "heatmap", colorscale: "Blues", reversescale: true,
                  y: answer.cohorts.map(function (c) { return c.start; }),
                  x: (answer.cohorts[0] || { values: [] }).values.map(function (_, k) { return "Bucket " + k; }),
                  z: answer.cohorts.map(function (c) { return c.percentages; }),
                  hovertemplate: "%{y}, %{x}: %{z:.1%}<extra></extra>" });
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
                  y: answer.variants.map(function (v) { return v.rate; }), name: "rate",
                  hovertemplate: "%{x}: %{y:.1%}<extra></extra>" });
    layout.yaxis = { tickformat: ".0%" };
  } else if (kind === "path") {
    var paths = answer.paths.slice(0, 15).reverse();
    traces.push({ type: "bar", orientation: "h", y: paths.map(function (p) {
                    return p.steps.join(" → ") || "(direct)"; }),
                  x: paths.map(function (p) { return p.people; }),
                  customdata: paths.map(function (p) { return duration(p.median_seconds); }),
                  hovertemplate: "%{x} people, median time %{customdata}<extra></extra>" });
    layout.margin.l = 240;
  }
  window.Plotly.newPlot(chart, traces, layout, { responsive: true, displaylogo: false });
})();
