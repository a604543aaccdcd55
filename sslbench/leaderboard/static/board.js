/* sslbench leaderboard page: filters and sortable columns. Inlined by html.py; reads its data
   from the <script type="application/json" id="board-data"> block and never builds HTML from
   strings (only textContent, hidden and attribute changes). */
(function () {
  "use strict";
  var node = document.getElementById("board-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  var rows = data.rows;
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.board"));

  function rowOf(tr) { return rows[Number(tr.getAttribute("data-row"))]; }
  function provOf(tr) { return document.getElementById("prov-" + tr.getAttribute("data-row")); }
  function isOpen(tr) {
    var b = tr.querySelector("button.prov-toggle");
    return !!b && b.getAttribute("aria-expanded") === "true";
  }
  function showProv(tr) {
    var prov = provOf(tr);
    if (prov) { prov.hidden = tr.hidden || !isOpen(tr); }
  }
  function bodyRows(table) {
    return Array.prototype.slice.call(table.tBodies[0].querySelectorAll("tr[data-row]"));
  }

  function applyFilters() {
    var active = selects.filter(function (s) { return s.value !== ""; }).map(function (s) {
      return [s.getAttribute("data-filter"), s.value];
    });
    var shown = 0, total = 0;
    tables.forEach(function (table) {
      var visible = 0;
      bodyRows(table).forEach(function (tr) {
        var r = rowOf(tr);
        var ok = active.every(function (f) { return String(r[f[0]]) === f[1]; });
        tr.hidden = !ok;
        showProv(tr);
        if (ok) { visible += 1; }
        total += 1;
      });
      shown += visible;
      var empty = table.tBodies[0].querySelector("tr.empty");
      if (empty) { empty.hidden = visible > 0; }
    });
    var count = document.getElementById("filter-count");
    if (count) { count.textContent = shown + " of " + total + " rows shown"; }
  }

  function compare(a, b, key, numeric, dir) {
    var va = a[key], vb = b[key];
    if (numeric) {
      var na = (va === null || va === undefined), nb = (vb === null || vb === undefined);
      if (na || nb) { return na === nb ? 0 : (na ? 1 : -1); }  // missing values always last
      return dir * (va - vb);
    }
    return dir * String(va).localeCompare(String(vb), undefined, {numeric: true});
  }

  function sortTable(table, th) {
    var key = th.getAttribute("data-key");
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir;
    if (current === "descending") { dir = 1; }
    else if (current === "ascending") { dir = -1; }
    else { dir = numeric ? -1 : 1; }  // first click: numbers best-first, text A-Z
    Array.prototype.forEach.call(table.tHead.querySelectorAll("th"), function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var items = bodyRows(table).map(function (tr, i) { return {tr: tr, r: rowOf(tr), i: i}; });
    items.sort(function (x, y) {
      return compare(x.r, y.r, key, numeric, dir) || (x.i - y.i);
    });
    var empty = body.querySelector("tr.empty");
    items.forEach(function (it) {
      body.insertBefore(it.tr, empty);
      var prov = provOf(it.tr);
      if (prov) { body.insertBefore(prov, empty); }  // provenance stays under its row
    });
  }

  selects.forEach(function (s) { s.addEventListener("change", applyFilters); });
  var reset = document.getElementById("filter-reset");
  if (reset) {
    reset.addEventListener("click", function () {
      selects.forEach(function (s) { s.value = ""; });
      applyFilters();
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("button.prov-toggle"), function (b) {
    b.addEventListener("click", function () {
      var tr = b.closest("tr");
      var open = !isOpen(tr);
      b.setAttribute("aria-expanded", open ? "true" : "false");
      tr.classList.toggle("open", open);
      showProv(tr);
    });
  });
  tables.forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.querySelectorAll("th[data-key]"), function (th) {
      var button = th.querySelector("button.sort");
      if (button) { button.addEventListener("click", function () { sortTable(table, th); }); }
    });
  });
  applyFilters();
}());
