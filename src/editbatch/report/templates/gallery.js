// The gallery in pages over every item. index.js holds one entry per row, in the gallery's order (category,
// then input order): [row, category, statuses, rank, searched text]; the rows themselves are in chunk files,
// loaded with <script src> (a page opened from file:// may not fetch()) when a page shows them.
// The HTML holds the first page, so nothing is loaded until the filters, the pager or a link ask for more.
// A link ending in #q=words opens with that search.
(function () {
  var gallery = document.getElementById("gallery");
  var index = editbatchGallery.index, chunks = editbatchGallery.chunks;
  var category = document.getElementById("f-category"), status = document.getElementById("f-status");
  var search = document.getElementById("f-search"), sort = document.getElementById("f-sort");
  var count = document.getElementById("f-count"), pageText = document.getElementById("f-page");
  var prev = document.getElementById("f-prev"), next = document.getElementById("f-next");
  if (!index) { pageText.textContent = "the item index (" + gallery.dataset.items + "/index.js) did not load"; return; }
  var PAGE = index.meta.page, CHUNK = index.meta.chunk, names = index.meta.categories;
  var sections = {};
  document.querySelectorAll("section.category").forEach(function (s) { sections[s.dataset.category] = s; });
  var shown = index.items, page = 0, renders = 0;

  function load(ks, done) {
    var left = ks.filter(function (k) { return !chunks[k]; });
    var waiting = left.length;
    if (!waiting) return done();
    left.forEach(function (k) {
      var s = document.createElement("script");
      s.src = gallery.dataset.items + "/chunk-" + ("0000" + k).slice(-5) + ".js";
      s.onload = s.onerror = function () { if (--waiting === 0) done(); };
      document.head.appendChild(s);
    });
  }

  function filter() {
    var c = category.value, s = status.value, q = search.value.trim().toLowerCase();
    shown = c || s || q ? index.items.filter(function (e) {
      return (!c || names[e[1]] === c) && (!s || e[2].split(" ").indexOf(s) >= 0) && (!q || e[4].indexOf(q) >= 0);
    }) : index.items;
    if (sort && sort.checked) {  // worst score first within each category; rows without a score last
      shown = shown.slice().sort(function (a, b) {
        var x = a[3] === null ? Infinity : a[3], y = b[3] === null ? Infinity : b[3];
        return a[1] - b[1] || (x === y ? a[0] - b[0] : x < y ? -1 : 1);
      });
    }
  }

  function counts() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE)), total = index.items.length;
    count.textContent = shown.length === total ? total + " items" : shown.length + " of " + total + " items shown";
    pageText.textContent = "page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    var per = {};
    shown.forEach(function (e) { per[e[1]] = (per[e[1]] || 0) + 1; });
    names.forEach(function (name, k) {
      var counter = sections[name].querySelector(".count"), all = +counter.dataset.total, n = per[k] || 0;
      counter.textContent = n === all ? "(" + all + ")" : "(" + n + " of " + all + ")";
    });
  }

  function render(then) {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.max(0, Math.min(page, pages - 1));
    var slice = shown.slice(page * PAGE, (page + 1) * PAGE), token = ++renders;
    var ks = slice.map(function (e) { return Math.floor(e[0] / CHUNK); });
    load(ks.filter(function (k, i) { return ks.indexOf(k) === i; }), function () {
      if (token !== renders) return;  // a later filter or page change won
      var html = {};
      slice.forEach(function (e) {
        var rows = chunks[Math.floor(e[0] / CHUNK)];
        (html[e[1]] = html[e[1]] || []).push(rows ? rows[e[0] % CHUNK] : "");
      });
      names.forEach(function (name, k) {
        sections[name].querySelector("tbody").innerHTML = (html[k] || []).join("");
        sections[name].classList.toggle("hidden", !html[k]);
      });
      counts();
      if (then) then();
    });
  }

  function apply() { filter(); page = 0; render(); }
  [category, status].forEach(function (el) { el.addEventListener("change", apply); });
  search.addEventListener("input", apply);
  if (sort) sort.addEventListener("change", apply);
  prev.addEventListener("click", function () { page--; render(function () { gallery.scrollIntoView(); }); });
  next.addEventListener("click", function () { page++; render(function () { gallery.scrollIntoView(); }); });

  // A timeline bar or an error links to #item-N: show its page, whatever the filters hid.
  function reveal() {
    var hash = decodeURIComponent(location.hash.slice(1));
    if (hash.indexOf("q=") === 0) { search.value = hash.slice(2); apply(); return; }
    if (!/^item-\d+$/.test(hash) || document.getElementById(hash)) return;
    category.value = ""; status.value = ""; search.value = "";
    filter();
    var n = +hash.slice(5), at = -1;
    for (var i = 0; i < shown.length; i++) { if (shown[i][0] === n) { at = i; break; } }
    if (at < 0) return;
    page = Math.floor(at / PAGE);
    render(function () { var row = document.getElementById(hash); if (row) row.scrollIntoView(); });
  }
  window.addEventListener("hashchange", reveal);
  counts();
  reveal();
})();
