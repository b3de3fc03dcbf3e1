// Glue between the series endpoint and uPlot: draw each chart, redraw it when
// the policy's live section is pushed (at most a few times a second) or every 5 s.
(function () {
  // The theme's colours (static/css/app.css), read when a chart is first drawn.
  function themed(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function toSeries(data) {
    var names = Object.keys(data).filter(function (k) { return k !== "t"; });
    return {
      names: names,
      columns: [data.t].concat(names.map(function (n) { return data[n]; })),
    };
  }

  function draw(el) {
    fetch(el.dataset.seriesUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data || !data.t) return;
        var s = toSeries(data);
        if (el._plot) { el._plot.setData(s.columns); return; }
        var opts = {
          width: el.clientWidth || 800, height: 220,
          series: [{}].concat(s.names.map(function (n, i) {
            return { label: n.replace("_", " "), stroke: themed("--chart-" + (i % 4 + 1)), width: 1.5 };
          })),
          axes: [{}, { label: "per second" }].map(function (axis) {
            axis.stroke = themed("--muted");
            axis.grid = { stroke: themed("--line") };
            axis.ticks = { stroke: themed("--line") };
            return axis;
          }),
        };
        el._plot = new uPlot(opts, s.columns, el);
      });
  }

  function drawAll() { document.querySelectorAll(".chart[data-series-url]").forEach(draw); }
  document.addEventListener("DOMContentLoaded", drawAll);
  document.addEventListener("htmx:oobAfterSwap", drawAll);
  setInterval(drawAll, 5000);
})();
