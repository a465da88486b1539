// Filter and sort the tables whose rows are model types (the status page).
// A table qualifies when its first header cell reads "model type". Plain JS, no
// library: the docs work offline.
(function () {
  "use strict";

  // A cell's sort key: a number when the cell reads as one, else its lower-case text;
  // null for an empty cell, which sorts last in both directions.
  function sortKey(cell) {
    const text = cell.textContent.trim();
    if (text === "") return null;
    const number = Number(text);
    return Number.isNaN(number) ? text.toLowerCase() : number;
  }

  function compareKeys(a, b, direction) {
    if (a === null || b === null) return (a === null) - (b === null);
    if (typeof a !== typeof b) return typeof a === "number" ? -direction : direction;
    return direction * (a < b ? -1 : a > b ? 1 : 0);
  }

  function rowFails(row) {
    return row.querySelector(".verdict-fail") !== null;
  }

  function element(tag, props) {
    return Object.assign(document.createElement(tag), props);
  }

  // A page rendered before report.py wrote labels has the glyphs, which a browser without
  // an emoji font draws as empty boxes: show the same labels instead.
  function labelGlyphs(table) {
    for (const cell of table.querySelectorAll("tbody td")) {
      const word = { "\u2705": "pass", "\u274c": "fail" }[cell.textContent.trim()];
      if (word) {
        const label = element("span", { className: "verdict verdict-" + word, textContent: word });
        cell.replaceChildren(label);
      }
    }
  }

  function enhance(table, index) {
    labelGlyphs(table);
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const texts = new Map(rows.map((row) => [row, row.textContent.toLowerCase()]));
    const hasVerdicts = table.querySelector(".verdict") !== null;

    const search = element("input", {
      type: "search",
      className: "model-table-filter",
      placeholder: "Filter rows, e.g. llama or guard",
    });
    search.setAttribute("aria-label", "Filter the rows of the table below");
    table.id = table.id || "model-table-" + index;
    table.classList.add("model-table");
    search.setAttribute("aria-controls", table.id);
    const status = element("select", { className: "model-table-status" });
    status.setAttribute("aria-label", "Show rows by verdict");
    for (const [value, label] of [["all", "all rows"], ["fail", "failing"], ["pass", "passing"]]) {
      status.append(element("option", { value: value, textContent: label }));
    }
    const count = element("span", { className: "model-table-count" });
    count.setAttribute("aria-live", "polite");
    const controls = element("div", { className: "model-table-controls" });
    controls.append(search, ...(hasVerdicts ? [status] : []), count);
    const container = table.closest(".pst-scrollable-table-container") || table;
    container.before(controls);

    function filter() {
      const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const row of rows) {
        const text = texts.get(row);
        const verdictOk = status.value === "all" || rowFails(row) === (status.value === "fail");
        row.hidden = !(verdictOk && terms.every((term) => text.includes(term)));
        shown += row.hidden ? 0 : 1;
      }
      count.textContent = shown + " of " + rows.length + " rows";
    }
    search.addEventListener("input", filter);
    status.addEventListener("change", filter);

    // Sorting: a click on a header sorts by its column, a second click reverses.
    const headers = Array.from(table.tHead.rows[0].cells);
    headers.forEach((th, column) => {
      // Columns of sentences (what was checked, errors) get room to stay readable.
      const longest = Math.max(...rows.map((row) => row.cells[column].textContent.trim().length));
      th.classList.toggle("model-table-wide", longest > 40);
      const button = element("button", { type: "button", className: "model-table-sort" });
      button.append(...th.childNodes);
      th.append(button);
      th.setAttribute("aria-sort", "none");
      button.addEventListener("click", () => {
        const direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        headers.forEach((other) => other.setAttribute("aria-sort", "none"));
        th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
        const keyed = rows.map((row) => [sortKey(row.cells[column]), row]);
        keyed.sort((a, b) => compareKeys(a[0], b[0], direction));
        body.append(...keyed.map((pair) => pair[1]));
      });
    });
    filter();
  }

  function enhanceAll() {
    const tables = Array.from(document.querySelectorAll("table")).filter((table) => {
      const head = table.tHead && table.tHead.rows[0];
      return head && table.tBodies[0] && head.cells[0].textContent.trim() === "model type";
    });
    tables.forEach(enhance);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", enhanceAll);
  } else {
    enhanceAll();
  }
})();
