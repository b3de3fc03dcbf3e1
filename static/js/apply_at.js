// A change request's "Apply at" is typed in the browser's own time zone (a
// datetime-local input has none): before the form is sent, this adds the zone's
// offset at that date, in minutes east of UTC, so the server reads the moment
// the person meant. Without it the server reads the time as UTC, and says so.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var local = form.querySelector("input[name=apply_at]");
  var offset = form.querySelector("input[name=apply_at_offset]");
  if (!local || !offset) return;
  offset.value = local.value ? String(-new Date(local.value).getTimezoneOffset()) : "";
});
