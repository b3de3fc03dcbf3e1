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
// Times an override ends: the server writes an absolute time (the row's HTML is kept by
// its values); here it becomes the viewer's local time and "in 52 min", kept current.
function untilText(date) {
  var now = new Date();
  var time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return time;
  return date.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}
function inText(date) {
  var seconds = (date.getTime() - Date.now()) / 1000;
  if (seconds <= 0) return "(ended)";
  var minutes = Math.ceil(seconds / 60);
  if (minutes < 60) return "(in " + minutes + " min)";
  var hours = Math.floor(minutes / 60);
  return "(in " + hours + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "") + ")";
}
function showExpiries() {
  document.querySelectorAll("time[data-expires]").forEach(function (el) {
    var date = new Date(el.getAttribute("datetime"));
    if (isNaN(date)) return;
    el.textContent = untilText(date);
    el.title = date.toString();
    var rest = el.parentElement.querySelector("[data-expires-in]");
    if (rest) rest.textContent = inText(date);
  });
  document.querySelectorAll(".override-form").forEach(previewExpiry);
}
// What the panel's chosen expiry comes to, before it is applied.
function previewExpiry(form) {
  var out = form.querySelector("[data-expiry-preview]");
  if (!out) return;
  var chosen = form.querySelector("input[name=expires_in_minutes]:checked");
  var minutes = chosen ? chosen.value : "";
  if (minutes === "custom") minutes = form.querySelector("input[name=custom_minutes]").value;
  if (!chosen || chosen.value === "") {
    out.textContent = "Until someone lifts it.";
  } else if (!(parseFloat(minutes) > 0)) {
    out.textContent = "Enter the number of minutes.";
  } else {
    var date = new Date(Date.now() + parseFloat(minutes) * 60000);
    out.textContent = "Ends at " + untilText(date) + " " + inText(date) + ".";
  }
}
document.addEventListener("DOMContentLoaded", function () { showExpiries(); });
setInterval(showExpiries, 15000);

// "Act" on a row opens the override panel in a row of its own just below, which pushes
// never swap (they replace rows by id), so what the operator typed stays. One at a time.
// (Without scripts, the row's link opens the policy's page and its form.)
function actButton(panel) {
  return document.querySelector('[aria-controls="' + panel.id + '"]');
}
function closePanel(panel, refocus) {
  var button = actButton(panel);
  panel.remove();
  if (button) {
    button.setAttribute("aria-expanded", "false");
    if (refocus) button.focus();
  }
}
function fitPanel(panel) {
  // After a push: the new row's Act says the panel is open, lifting is offered only
  // while an override is in force, and the panel stays below its row.
  var button = actButton(panel);
  if (!button) return closePanel(panel, false);
  button.setAttribute("aria-expanded", "true");
  var row = button.closest("tr");
  if (row.nextElementSibling !== panel) row.after(panel);
  var lift = panel.querySelector("[data-lift]");
  if (lift) lift.hidden = !row.querySelector("[data-override-active]");
}
function openPanel(button) {
  var template = document.getElementById("act-panel");
  if (!template) return;
  document.querySelectorAll("tr.act-panel").forEach(function (p) { closePanel(p, false); });
  var row = button.closest("tr");
  var field = button.dataset.act;
  var kind = field.split(":")[0];
  var panel = document.createElement("tr");
  panel.className = "act-panel";
  panel.id = button.getAttribute("aria-controls");
  var cell = panel.insertCell();
  cell.colSpan = row.cells.length;
  var heading = document.createElement("h3");
  heading.textContent = "Act on " + kind.replace("_", " ") + " " + field.slice(kind.length + 1);
  cell.append(heading, template.content.cloneNode(true));
  var form = cell.querySelector("form");
  form.setAttribute("aria-label", heading.textContent);
  form.querySelector("input[name=policy]").value = field;
  form.querySelectorAll("[data-kind]").forEach(function (group) {
    if (group.dataset.kind !== kind) group.remove();  // only this kind's actions
  });
  var expiry = form.querySelector("[data-expiry]");
  if (expiry && !form.querySelector('[data-kind="' + kind + '"] .act-states')) {
    expiry.hidden = expiry.disabled = true;
  }
  row.after(panel);
  fitPanel(panel);
  if (window.htmx) window.htmx.process(panel);
  previewExpiry(form);
  form.querySelector('[data-kind="' + kind + '"] input[name=action]').focus();
}
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-act]");
  if (button) {
    event.preventDefault();  // the link is for pages without scripts
    var open = document.getElementById(button.getAttribute("aria-controls"));
    if (open) closePanel(open, true); else openPanel(button);
    return;
  }
  var close = event.target.closest("[data-act-close]");
  if (close) closePanel(close.closest("tr.act-panel"), true);
});
document.addEventListener("keydown", function (event) {
  if (event.key === " " && event.target.matches && event.target.matches("a[data-act]")) {
    event.preventDefault();  // Space presses Act, as it would a button
    event.target.click();
    return;
  }
  if (event.key !== "Escape") return;
  var panel = event.target.closest && event.target.closest("tr.act-panel");
  if (panel) closePanel(panel, true);
});
document.addEventListener("change", function (event) {
  var form = event.target.closest(".override-form");
  if (!form) return;
  var chosen = form.querySelector("input[name=action]:checked:not(:disabled)");
  var expiry = form.querySelector("[data-expiry]");
  // The expiry is for a held state; a reset or a purge is done once.
  if (expiry && chosen && !expiry.hidden) {
    expiry.disabled = !!chosen.closest(".act-once");
  }
  previewExpiry(form);
});
document.addEventListener("input", function (event) {
  if (event.target.name !== "custom_minutes") return;
  var form = event.target.closest(".override-form");
  form.querySelector('input[name=expires_in_minutes][value=custom]').checked = true;
  previewExpiry(form);
});
document.addEventListener("htmx:wsAfterMessage", function () {
  document.querySelectorAll("tr.act-panel").forEach(fitPanel);
  // A policy's page: its section is pushed, its form is not; lifting follows the section.
  var lift = document.querySelector("#override-form [data-lift]");
  var section = document.getElementById("policy-live");
  if (lift && section) lift.hidden = !section.querySelector("[data-override] .badge");
  showExpiries();
});
// An Apply with no action picked is answered here, before anything is sent; the
// lift is a button of its own and needs none.
document.addEventListener("htmx:configRequest", function (event) {
  var form = event.detail.elt;
  if (!form.matches(".override-form") || event.detail.formData.getAll("action").length) return;
  event.preventDefault();
  actedOn = null;
  var first = form.querySelector("input[name=action]");
  first.setCustomValidity("Pick an action: a state to hold, or an action done once.");
  first.reportValidity();
  first.addEventListener("change", function () { first.setCustomValidity(""); }, { once: true });
});
// After an action the page's main part is replaced: focus goes back to the row's Act,
// and if the action was refused, the panel opens again with what the operator had chosen.
var actedOn = null;
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!form.closest || !form.closest("tr.act-panel")) return;
  var lifting = event.submitter && event.submitter.value === "lift";
  if (!lifting && !form.querySelector("input[name=action]:checked")) return;  // not sent
  actedOn = { field: form.querySelector("input[name=policy]").value, values: [] };
  form.querySelectorAll("input[name]").forEach(function (input) {
    if (input.type === "hidden") return;
    actedOn.values.push([input.name, input.value, input.checked]);
  });
});
document.addEventListener("htmx:afterSettle", function (event) {
  showExpiries();
  if (!actedOn || !event.detail || !event.detail.xhr) return;  // a request's answer, not a push
  var acted = actedOn;
  actedOn = null;
  var button = document.querySelector('[data-act="' + CSS.escape(acted.field) + '"]');
  if (!button) return;
  if (!document.querySelector(".flash.error")) return button.focus();
  openPanel(button);
  var form = document.getElementById(button.getAttribute("aria-controls")).querySelector("form");
  acted.values.forEach(function (value) {
    var input = Array.from(form.querySelectorAll('input[name="' + value[0] + '"]')).find(function (i) {
      return i.type !== "radio" || i.value === value[1];
    });
    if (!input) return;
    if (input.type === "radio") input.checked = value[2]; else input.value = value[1];
  });
  previewExpiry(form);
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
