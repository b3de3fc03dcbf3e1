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
// "Act" on a row picks that policy in the page's override form.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-act]");
  if (!button) return;
  var form = document.getElementById("override-form");
  if (!form) return;
  form.querySelector("select[name=policy]").value = button.dataset.act;
  form.scrollIntoView({ block: "center" });
  form.querySelector("input[name=reason]").focus();
});
