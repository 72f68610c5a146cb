<script>
var _kmq = _kmq || [];
(function (base, key) {
  var id = localStorage.getItem("km_ai") ||
    Math.random().toString(36).slice(2) + Date.now().toString(36);
  localStorage.setItem("km_ai", id);
  function send(path, params) {
    var q = "_k=" + encodeURIComponent(key) + "&_t=" + Math.floor(Date.now() / 1000) + "&_d=1";
    for (var name in params) {
      q += "&" + encodeURIComponent(name) + "=" + encodeURIComponent(params[name]);
    }
    new Image().src = base + path + "?" + q;
  }
  var run = {
    record: function (name, props) {
      send("/e", Object.assign({}, props, {_p: id, _n: name}));
    },
    set: function (props) { send("/s", Object.assign({}, props, {_p: id})); },
    identify: function (name) {
      send("/a", {_p: id, _n: name});
      id = name;
      localStorage.setItem("km_ai", id);
    },
    alias: function (a, b) { send("/a", {_p: a, _n: b}); }
  };
  function apply(command) { if (run[command[0]]) run[command[0]].apply(null, command.slice(1)); }
  _kmq.forEach(apply);
  _kmq = {push: apply};
})({{ base|tojson }}, {{ key|tojson }});
_kmq.push(["record", "Visited Site"]);
</script>
