// Gallery filters: category, status and a text search; hides rows and empty categories.
(function () {
  var category = document.getElementById("f-category");
  var status = document.getElementById("f-status");
  var search = document.getElementById("f-search");
  var count = document.getElementById("f-count");
  function apply() {
    var c = category.value, s = status.value, q = search.value.trim().toLowerCase();
    var shown = 0, total = 0;
    document.querySelectorAll("section.category").forEach(function (section) {
      var visible = 0;
      var rows = section.querySelectorAll("tr.item");
      rows.forEach(function (row) {
        var ok = (!c || section.dataset.category === c) &&
                 (!s || row.dataset.status.split(" ").indexOf(s) >= 0) &&
                 (!q || row.dataset.text.indexOf(q) >= 0);
        row.classList.toggle("hidden", !ok);
        if (ok) visible++;
      });
      total += rows.length;
      shown += visible;
      section.classList.toggle("hidden", visible === 0);
      var counter = section.querySelector(".count");
      counter.textContent = visible === rows.length ? "(" + rows.length + ")" : "(" + visible + " of " + rows.length + ")";
    });
    count.textContent = shown === total ? total + " items" : shown + " of " + total + " items shown";
  }
  // Sort by score, worst first (rows without a score last), or back to input order.
  var sort = document.getElementById("f-sort");
  function order() {
    document.querySelectorAll("section.category tbody").forEach(function (body) {
      var rows = Array.prototype.slice.call(body.querySelectorAll("tr.item"));
      rows.sort(function (a, b) {
        if (!sort.checked) return a.dataset.order - b.dataset.order;
        var x = a.dataset.rank === "" ? Infinity : +a.dataset.rank, y = b.dataset.rank === "" ? Infinity : +b.dataset.rank;
        return x - y;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  }
  if (sort) sort.addEventListener("change", order);
  [category, status].forEach(function (el) { el.addEventListener("change", apply); });
  search.addEventListener("input", apply);
  // A timeline bar or an error links to an item: show it even if the filters hide it.
  function reveal() {
    var target = location.hash && document.getElementById(location.hash.slice(1));
    if (target && target.classList.contains("hidden")) {
      category.value = ""; status.value = ""; search.value = "";
      apply();
      target.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", reveal);
  apply();
  reveal();
})();
