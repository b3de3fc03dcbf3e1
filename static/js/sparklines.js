// The live overview's pictures: per row, the last 15 minutes per minute (traffic in
// grey, what went wrong in red) and, for a breaker, a strip of the states it reported
// in each minute, so a 1-second half-open is still visible afterwards. Drawn as
// inline SVG from one request (sparklines.json), again after every push swaps a row,
// and refreshed every 30 s.
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var WIDTH = 120, HEIGHT = 24, STRIP = 6;
  // Worst first: a minute's strip shows the worst state reported in it.
  var STATES = ["open", "forced_open", "half_open", "disabled", "forced_closed", "closed"];
  var data = null;

  function el(name, attrs) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function points(values, max, height) {
    var step = WIDTH / Math.max(values.length - 1, 1);
    return values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (height - (max ? (v / max) * (height - 2) : 0) - 1).toFixed(1);
    }).join(" ");
  }

  function total(values) { return values.reduce(function (a, b) { return a + b; }, 0); }

  function describe(kind, series) {
    var parts = [];
    Object.keys(series).forEach(function (name) {
      if (name !== "states") parts.push(Math.round(total(series[name])) + " " + name.replace("_", " "));
    });
    var text = "Last 15 minutes: " + parts.join(", ");
    if (series.states) {
      var seen = {};
      series.states.forEach(function (minute) {
        Object.keys(minute).forEach(function (s) { if (s !== "closed") seen[s] = true; });
      });
      var states = Object.keys(seen).map(function (s) { return s.replace("_", " "); });
      text += states.length ? "; states other than closed: " + states.join(", ") : "; closed throughout";
    }
    return text;
  }

  function draw(cell) {
    var series = data && data.policies[cell.dataset.spark];
    cell.textContent = "";
    if (!series) {
      cell.innerHTML = '<span class="muted">no reports</span>';
      return;
    }
    var kind = cell.dataset.spark.split(":")[0];
    var names = Object.keys(series).filter(function (n) { return n !== "states"; });
    var traffic = series[names[0]], trouble = names.slice(1).map(function (n) { return series[n]; });
    var max = Math.max.apply(null, traffic.concat.apply(traffic, trouble).concat([0]));
    var height = series.states ? HEIGHT + STRIP + 2 : HEIGHT;
    var svg = el("svg", { width: WIDTH, height: height, viewBox: "0 0 " + WIDTH + " " + height, role: "img" });
    var title = el("title", {});
    title.textContent = describe(kind, series);
    svg.appendChild(title);
    svg.appendChild(el("polyline", { points: points(traffic, max, HEIGHT), class: "spark-traffic" }));
    trouble.forEach(function (values) {
      if (total(values) > 0) svg.appendChild(el("polyline", { points: points(values, max, HEIGHT), class: "spark-trouble" }));
    });
    if (series.states) {
      var width = WIDTH / series.states.length;
      series.states.forEach(function (minute, i) {
        var worst = STATES.find(function (s) { return minute[s]; });
        if (!worst) return;
        svg.appendChild(el("rect", {
          x: (i * width).toFixed(1), y: HEIGHT + 2, width: Math.max(width - 1, 1).toFixed(1), height: STRIP,
          class: "strip strip-" + worst.replace("_", ""),
        }));
      });
    }
    cell.setAttribute("aria-label", title.textContent);
    cell.appendChild(svg);
  }

  function drawAll() { document.querySelectorAll("[data-spark]").forEach(draw); }

  function load() {
    var root = document.querySelector("[data-sparklines-url]");
    if (!root) return;
    fetch(root.dataset.sparklinesUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (json) { if (json && json.policies) { data = json; drawAll(); } })
      .catch(function () {});
  }

  document.addEventListener("DOMContentLoaded", function () {
    load();
    setInterval(load, 30000);
  });
  // A push swaps rows by id: draw the new rows' cells from what was read.
  document.addEventListener("htmx:wsAfterMessage", function () { if (data) drawAll(); });
})();
