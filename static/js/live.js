// Glue for the live pages: say when the websocket is lost (htmx's ws extension
// reconnects by itself, backing off) and when it is back.
document.addEventListener("htmx:wsOpen", function () {
  document.querySelectorAll("[data-live-status]").forEach(function (el) {
    el.textContent = "live";
    el.dataset.liveStatus = "connected";
  });
});
document.addEventListener("htmx:wsClose", function () {
  document.querySelectorAll("[data-live-status]").forEach(function (el) {
    el.textContent = "connection lost: reconnecting…";
    el.dataset.liveStatus = "disconnected";
  });
});
// "Act" on a row picks that policy in the page's override form, which then offers
// that kind's actions only. (Without scripts, the link opens the policy's page.)
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-act]");
  if (!button) return;
  var form = document.getElementById("override-form");
  var select = form && form.querySelector("select[name=policy]");
  if (!select) return;
  event.preventDefault();
  var field = button.dataset.act;
  var kind = field.split(":")[0];
  var option = Array.from(select.options).find(function (o) { return o.value === field; });
  if (!option) {
    option = new Option(kind.replace("_", " ") + " " + field.slice(kind.length + 1), field);
    select.add(option);
  }
  select.value = field;
  var action = form.querySelector("select[name=action]");
  action.querySelectorAll("optgroup[data-kind]").forEach(function (group) {
    group.disabled = group.hidden = group.dataset.kind !== kind;
  });
  if (action.selectedOptions[0] && action.selectedOptions[0].matches(":disabled")) {
    action.value = action.querySelector("optgroup:not([disabled]) option").value;
  }
  form.scrollIntoView({ block: "center" });
  form.querySelector("input[name=reason]").focus();
});
// Relative times (<time data-relative>, audit/templatetags/humane.py): the text is kept
// current every 30 s, and the absolute time is shown in the browser's own zone.
(function () {
  function relative(at) {
    var s = Math.round((Date.now() - at) / 1000), past = s >= 0, t;
    s = Math.abs(s);
    if (s < 5) return past ? "just now" : "in a moment";
    t = s >= 86400 ? Math.floor(s / 86400) + " d" : s >= 3600 ? Math.floor(s / 3600) + " h"
      : s >= 60 ? Math.floor(s / 60) + " min" : s + " s";
    return past ? t + " ago" : "in " + t;
  }
  var full = { year: "numeric", month: "2-digit", day: "2-digit", hourCycle: "h23", hour: "2-digit",
    minute: "2-digit", second: "2-digit", timeZoneName: "short" };
  function refresh(root) {
    root.querySelectorAll("time[data-relative]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime")), d = new Date(at);
      if (isNaN(at)) return;
      el.title = d.toLocaleString(undefined, full);
      if (el.dataset.relative !== "clock") { el.textContent = relative(at); return; }
      var clock = d.toLocaleTimeString(undefined, { hourCycle: "h23", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
      if (d.toDateString() !== new Date().toDateString()) clock = d.toLocaleDateString() + " " + clock;
      el.textContent = clock + " (" + relative(at) + ")";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { refresh(document); });
  document.addEventListener("htmx:load", function (event) { refresh(event.target); });
  setInterval(function () { refresh(document); }, 30000);
})();
