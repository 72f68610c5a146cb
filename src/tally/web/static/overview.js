// The overview: the chart of events per day, and the live feed (Server-Sent Events).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("overview-data").textContent);
  var product = document.getElementById("overview-script").dataset.product;
  if (window.Plotly) {
    window.Plotly.newPlot("chart", [{
      type: "bar", x: data.days.map(function (d) { return d.start.slice(0, 10); }),
      y: data.days.map(function (d) { return d.events; }), name: "events"
    }], { margin: { t: 20, r: 10, b: 60, l: 50 } }, { responsive: true, displaylogo: false });
  }
  var feed = document.getElementById("live-feed");
  var state = document.getElementById("live-state");
  var source = new EventSource("/products/" + encodeURIComponent(product) + "/live");
  source.addEventListener("ready", function () { state.textContent = "connected"; });
  source.addEventListener("error", function () { state.textContent = "reconnecting…"; });
  source.addEventListener("record", function (message) {
    var r = JSON.parse(message.data);
    var item = document.createElement("li");
    var what = r.kind === "event" ? r.name : r.kind === "set" ? "set " + r.name + " = " + r.value
      : "alias → " + r.name;
    item.textContent = r.time + "  " + r.identity + "  " + what;
    item.className = "live-" + r.kind;
    feed.insertBefore(item, feed.firstChild);
    while (feed.children.length > 200) feed.removeChild(feed.lastChild);
  });
})();
