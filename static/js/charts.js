// Glue between the series endpoint and uPlot: draw each chart, redraw it when
// the policy's live section is pushed (at most a few times a second) or every 5 s.
// The policy's changes and overrides in the window are marked on the chart as
// vertical lines (blue: a change, purple: an override), listed under it in words.
(function () {
  // The theme's colours (static/css/app.css), read when a chart is first drawn.
  function themed(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  var MARK_COLORS = { change: "--accent", override: "--override" };

  function toSeries(data) {
    var names = Object.keys(data).filter(function (k) { return k !== "t" && k !== "marks"; });
    return {
      names: names,
      columns: [data.t].concat(names.map(function (n) { return data[n]; })),
    };
  }

  function drawMarks(u) {
    var marks = u._marks || [];
    var ctx = u.ctx;
    ctx.save();
    ctx.lineWidth = 2 * devicePixelRatio;
    ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    marks.forEach(function (mark) {
      var x = Math.round(u.valToPos(mark.t, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      ctx.strokeStyle = themed(MARK_COLORS[mark.kind] || "--muted");
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    });
    ctx.restore();
  }

  function listMarks(el, marks) {
    var list = el.nextElementSibling;
    if (!list || !list.classList.contains("chart-marks")) {
      list = document.createElement("ul");
      list.className = "chart-marks";
      el.after(list);
    }
    list.textContent = "";
    marks.forEach(function (mark) {
      var item = document.createElement("li");
      item.dataset.mark = mark.kind;
      var when = new Date(mark.t * 1000);
      var time = document.createElement("time");
      time.dateTime = when.toISOString();
      time.textContent = when.toLocaleTimeString();
      item.appendChild(time);
      item.appendChild(document.createTextNode(" " + mark.label));
      list.appendChild(item);
    });
  }

  function draw(el) {
    fetch(el.dataset.seriesUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data || !data.t) return;
        var s = toSeries(data);
        var marks = data.marks || [];
        listMarks(el, marks);
        if (el._plot) { el._plot._marks = marks; el._plot.setData(s.columns); return; }
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
          hooks: { draw: [drawMarks] },
        };
        el._plot = new uPlot(opts, s.columns, el);
        el._plot._marks = marks;
        el._plot.redraw();
      });
  }

  function drawAll() { document.querySelectorAll(".chart[data-series-url]").forEach(draw); }
  document.addEventListener("DOMContentLoaded", drawAll);
  document.addEventListener("htmx:oobAfterSwap", drawAll);
  setInterval(drawAll, 5000);
})();
