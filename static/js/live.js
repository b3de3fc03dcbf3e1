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
