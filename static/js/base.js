// Loaded by every page's <head>, before the stylesheet paints anything: it sets
// <html data-theme> from the visitor's choice (localStorage) or, for "system",
// from prefers-color-scheme, so a dark page never flashes light. Once the page
// is parsed it wires the theme choice and the "Menu" button of narrow screens,
// and makes a table wider than its card scroll inside it.
(function () {
  var KEY = "controlplane-theme";
  var root = document.documentElement;
  var dark = window.matchMedia("(prefers-color-scheme: dark)");

  function chosen() {
    try {
      var value = localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "system";
    } catch (e) {
      return "system"; // storage refused (private mode, policy): follow the system
    }
  }
  function apply() {
    var choice = chosen();
    root.dataset.theme = choice === "system" ? (dark.matches ? "dark" : "light") : choice;
    root.dataset.themeChoice = choice;
  }
  root.dataset.js = "";
  apply();
  dark.addEventListener("change", apply);

  // A table wider than the room its parent gives it scrolls inside it (class
  // "scrolls", see app.css; phones get that from a media query before this runs),
  // and is focusable while it does, so the keyboard can scroll it.
  function room(box) {
    var style = getComputedStyle(box);
    return box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  }
  function fitTables() {
    document.querySelectorAll("table:not(.diff):not(.u-legend)").forEach(function (table) {
      if (table.classList.contains("scrolls") && table.scrollWidth <= table.clientWidth) {
        table.classList.remove("scrolls"); // it may fit again: measure it as a table
      }
      if (table.offsetWidth > room(table.parentElement) + 1) table.classList.add("scrolls");
      var scrolls = table.scrollWidth > table.clientWidth;
      if (scrolls && !table.hasAttribute("tabindex")) {
        table.setAttribute("tabindex", "0");
        table.dataset.scrollFocus = "";
      } else if (!scrolls && "scrollFocus" in table.dataset) {
        table.removeAttribute("tabindex");
        delete table.dataset.scrollFocus;
      }
    });
  }
  window.addEventListener("resize", fitTables);
  document.addEventListener("htmx:afterSettle", fitTables);
  document.addEventListener("htmx:oobAfterSwap", fitTables); // websocket pushes

  document.addEventListener("DOMContentLoaded", function () {
    fitTables();
    var select = document.getElementById("theme-choice");
    if (select) {
      select.value = chosen();
      select.addEventListener("change", function () {
        try {
          if (select.value === "system") localStorage.removeItem(KEY);
          else localStorage.setItem(KEY, select.value);
        } catch (e) { /* not remembered, still applied below */ }
        root.dataset.themeChoice = select.value;
        root.dataset.theme = select.value === "system" ? (dark.matches ? "dark" : "light") : select.value;
      });
    }
    var toggle = document.querySelector(".menu-toggle");
    if (toggle) {
      toggle.addEventListener("click", function () {
        toggle.setAttribute("aria-expanded", String(toggle.getAttribute("aria-expanded") !== "true"));
      });
      // Escape folds an open menu and gives the focus back to its button.
      document.addEventListener("keydown", function (event) {
        if (event.key !== "Escape" || toggle.getAttribute("aria-expanded") !== "true") return;
        toggle.setAttribute("aria-expanded", "false");
        toggle.focus();
      });
    }
  });
})();
