// Loaded by every page's <head>, before the stylesheet paints anything: it sets
// <html data-theme> from the visitor's choice (localStorage) or, for "system",
// from prefers-color-scheme, so a dark page never flashes light. Once the page
// is parsed it wires the theme choice and the "Menu" button of narrow screens,
// and lets the keyboard scroll a table wider than the screen (it scrolls inside
// its card: see app.css), by making such a table focusable while it overflows.
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

  function focusableWhenScrolling() {
    document.querySelectorAll("table").forEach(function (table) {
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
  window.addEventListener("resize", focusableWhenScrolling);
  document.addEventListener("htmx:afterSettle", focusableWhenScrolling);
  document.addEventListener("htmx:oobAfterSwap", focusableWhenScrolling); // websocket pushes

  document.addEventListener("DOMContentLoaded", function () {
    focusableWhenScrolling();
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
