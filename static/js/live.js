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
