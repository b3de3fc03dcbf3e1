// Finding things: sortable tables (the policy list, the live overview) and the live
// overview's filter. The overview's rows are replaced by websocket pushes, so both the
// filter and the chosen order are applied again after every swap.
(function () {
  "use strict";

  // ---- Sorting: a table[data-sortable] whose th[data-sort] become buttons.
  // data-sort is "text", "number" (the first number in the cell, or its
  // data-sort-value) or "state" (the row's data-state, ordered by the th's
  // data-sort-order). Cells with no value sort last either way.

  function cellValue(row, index, type, order) {
    if (type === "state") {
      var rank = order.indexOf(row.dataset.state || "");
      return rank < 0 ? null : rank;
    }
    var cell = row.cells[index];
    if (!cell) return null;
    var text = cell.dataset.sortValue !== undefined ? cell.dataset.sortValue : cell.textContent;
    text = text.trim();
    if (type === "number") {
      var match = text.replace(/,/g, "").match(/-?\d+(?:\.\d+)?(?:e-?\d+)?/i);
      return match ? parseFloat(match[0]) : null;
    }
    return text === "" || text === "—" ? null : text.toLowerCase();
  }

  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function dataRows(tbody) {
    // The placeholder row ("No breakers.") spans the table and is not sorted.
    return Array.prototype.filter.call(tbody.rows, function (row) {
      return !row.querySelector("td[colspan]");
    });
  }

  function sortTable(table) {
    var index = parseInt(table.dataset.sortColumn, 10);
    if (isNaN(index)) return;
    var th = table.tHead.rows[0].cells[index];
    var type = th.dataset.sort;
    var order = (th.dataset.sortOrder || "").split(" ");
    var direction = table.dataset.sortDirection === "descending" ? -1 : 1;
    Array.prototype.forEach.call(table.tBodies, function (tbody) {
      var rows = dataRows(tbody);
      var keyed = rows.map(function (row, position) {
        return { row: row, value: cellValue(row, index, type, order), position: position };
      });
      keyed.sort(function (a, b) {
        if (a.value === null || b.value === null) {
          if (a.value === b.value) return a.position - b.position;
          return a.value === null ? 1 : -1;
        }
        return direction * compare(a.value, b.value) || a.position - b.position;
      });
      // Move rows only when the order changed: moving a row loses the focus inside it.
      var changed = keyed.some(function (item, i) { return item.row !== rows[i]; });
      if (changed) {
        keyed.forEach(function (item) { tbody.appendChild(item.row); });
      }
    });
  }

  function chooseSort(table, index) {
    var same = table.dataset.sortColumn === String(index);
    var direction = same && table.dataset.sortDirection === "ascending" ? "descending" : "ascending";
    table.dataset.sortColumn = String(index);
    table.dataset.sortDirection = direction;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (!th.dataset.sort) return;
      th.setAttribute("aria-sort", i === index ? direction : "none");
    });
    sortTable(table);
  }

  function enhanceTable(table) {
    if (table.dataset.sortReady) return;
    table.dataset.sortReady = "true";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      if (!th.dataset.sort) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.title = "Sort by " + th.textContent.trim().toLowerCase();
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      th.setAttribute("aria-sort", "none");
      // A button: Enter and Space press it, as a click does.
      button.addEventListener("click", function () { chooseSort(table, index); });
    });
  }

  // ---- The live overview's filter: form[data-live-filters] over tr[data-kind].

  var FORCED = ["forced_open", "forced_closed", "disabled"];

  function stateMatches(state, wanted) {
    if (wanted === "forced") return FORCED.indexOf(state) >= 0;
    return state === wanted;
  }

  function currentFilters(form) {
    return {
      q: form.elements.q.value.trim().toLowerCase(),
      kind: form.elements.kind.value,
      state: form.elements.state.value,
      tag: form.elements.tag.value,
    };
  }

  function rowMatches(row, f) {
    var tags = " " + (row.dataset.tags || "") + " ";
    return (
      (!f.q || (row.dataset.name || "").toLowerCase().indexOf(f.q) >= 0) &&
      (!f.kind || row.dataset.kind === f.kind) &&
      (!f.state || (row.dataset.kind === "breaker" && stateMatches(row.dataset.state, f.state))) &&
      (!f.tag || tags.indexOf(" " + f.tag + " ") >= 0)
    );
  }

  function applyFilters() {
    var form = document.querySelector("[data-live-filters]");
    if (!form) return;
    var f = currentFilters(form);
    var shown = 0;
    var total = 0;
    document.querySelectorAll("[data-kind-section]").forEach(function (section) {
      var kind = section.dataset.kindSection;
      var rows = section.querySelectorAll("tr[data-kind]");
      var visible = 0;
      rows.forEach(function (row) {
        var match = rowMatches(row, f);
        row.hidden = !match;
        if (match) visible += 1;
      });
      shown += visible;
      total += rows.length;
      // A section the kind or state filter rules out disappears; one the other
      // filters empty says so.
      section.hidden = Boolean((f.kind && f.kind !== kind) || (f.state && kind !== "breaker"));
      var note = section.querySelector("[data-no-match]");
      if (!note) {
        note = document.createElement("p");
        note.className = "muted";
        note.dataset.noMatch = "";
        note.textContent = "No " + section.querySelector("h2").textContent.toLowerCase() + " match the filters.";
        section.appendChild(note);
      }
      note.hidden = !(rows.length && !visible);
    });
    var count = form.querySelector("[data-filter-count]");
    if (count) {
      count.textContent = shown + " of " + total + " " + (total === 1 ? "policy" : "policies") + " shown";
    }
  }

  function keepInAddress(form) {
    var params = new URLSearchParams(window.location.search);
    ["q", "kind", "state", "tag"].forEach(function (name) {
      var value = form.elements[name].value.trim();
      if (value) params.set(name, value); else params.delete(name);
    });
    var query = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (query ? "?" + query : "") + window.location.hash);
  }

  // Many rows are swapped per push: filter and sort once, after all of them.
  var queued = false;
  function refresh() {
    if (queued) return;
    queued = true;
    Promise.resolve().then(function () {
      queued = false;
      applyFilters();
      document.querySelectorAll("table[data-sortable]").forEach(function (table) {
        enhanceTable(table);
        sortTable(table);
      });
    });
  }

  function start() {
    document.querySelectorAll("table[data-sortable]").forEach(enhanceTable);
    var form = document.querySelector("[data-live-filters]");
    if (form) {
      form.hidden = false;
      form.addEventListener("input", function () { applyFilters(); keepInAddress(form); });
      form.addEventListener("change", function () { applyFilters(); keepInAddress(form); });
      form.addEventListener("submit", function (event) { event.preventDefault(); });
      applyFilters();
    }
  }

  ["htmx:wsAfterMessage", "htmx:oobAfterSwap", "htmx:afterSwap"].forEach(function (name) {
    document.addEventListener(name, refresh);
  });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
