// llmtrace UI: the drawer, keyboard navigation, theme, copy buttons and the live tail.
// Pages work without this script; it only saves page loads. Markup it inserts comes from
// the server, which escapes all trace content.
"use strict";

(function () {
  const root = document.documentElement;
  const saved = localStorage.getItem("llmtrace-theme");
  if (saved) root.dataset.theme = saved;

  function drawer() { return document.getElementById("drawer"); }

  function setOpenParam(value) {
    const url = new URL(window.location.href);
    if (value) url.searchParams.set("open", value); else url.searchParams.delete("open");
    history.replaceState(null, "", url);
  }

  function select(row) {
    document.querySelectorAll("[data-span].selected").forEach((r) => r.classList.remove("selected"));
    if (row) { row.classList.add("selected"); row.focus({ preventScroll: false }); }
  }

  async function openSpan(row) {
    const panel = drawer();
    if (!panel || !row.dataset.span) return;
    select(row);
    const response = await fetch(row.dataset.span, { headers: { accept: "text/html" } });
    panel.innerHTML = await response.text();
    panel.hidden = false;
    panel.scrollTop = 0;
    setOpenParam(row.dataset.open);
  }

  function closeDrawer() {
    const panel = drawer();
    if (!panel || panel.hidden) return;
    panel.hidden = true;
    panel.innerHTML = "";
    setOpenParam(null);
  }

  function rows() { return Array.from(document.querySelectorAll("#spans tr.row, .turn[data-span]")); }

  function move(step) {
    const all = rows();
    if (all.length === 0) return;
    const current = all.findIndex((r) => r.classList.contains("selected") || r === document.activeElement);
    const next = all[Math.min(all.length - 1, Math.max(0, current + step))];
    select(next);
    if (!drawer() || drawer().hidden) return;
    openSpan(next);
  }

  function activate(row) {
    if (row.dataset.href) window.location.href = row.dataset.href;
    else openSpan(row);
  }

  document.addEventListener("click", (event) => {
    const target = event.target;
    if (target.closest("[data-close]")) { closeDrawer(); return; }
    const copy = target.closest("[data-copy]");
    if (copy) {
      const source = document.querySelector(copy.dataset.copy);
      if (source) {
        const text = source.textContent;
        const done = () => { copy.textContent = "Copied"; };
        if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, done);
        else done();
      }
      return;
    }
    if (target.closest("#theme")) {
      const dark = root.dataset.theme === "dark" ||
        (!root.dataset.theme && window.matchMedia("(prefers-color-scheme: dark)").matches);
      root.dataset.theme = dark ? "light" : "dark";
      localStorage.setItem("llmtrace-theme", root.dataset.theme);
      return;
    }
    const row = target.closest("tr.row, .turn[data-span]");
    if (!row || event.metaKey || event.ctrlKey || event.shiftKey) return;
    const link = target.closest("a");
    // links elsewhere (a session, a run) are followed; the row's own link opens the drawer
    if (link && !(link.href.includes("open=") && row.dataset.span)) return;
    event.preventDefault();
    activate(row);
  });

  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, select, textarea");
    if (event.key === "Escape") { closeDrawer(); return; }
    if (typing || event.altKey || event.metaKey || event.ctrlKey) return;
    if (event.key === "j" || event.key === "ArrowDown") { event.preventDefault(); move(1); }
    else if (event.key === "k" || event.key === "ArrowUp") { event.preventDefault(); move(-1); }
    else if (event.key === "Enter") {
      const row = document.activeElement && document.activeElement.closest("tr.row, .turn[data-span]");
      if (row) { event.preventDefault(); activate(row); }
    } else if (event.key === "/") {
      const search = document.querySelector("input[name=q], input[name=id]");
      if (search) { event.preventDefault(); search.focus(); }
    }
  });

  document.addEventListener("change", (event) => {
    if (event.target.id !== "range") return;
    const custom = document.querySelector(".custom-range");
    if (custom) custom.hidden = event.target.value !== "custom";
  });

  const charts = document.querySelector("#charts[data-src]");
  if (charts) {
    fetch(charts.dataset.src, { headers: { accept: "text/html" } })
      .then((response) => response.text())
      .then((html) => { charts.innerHTML = html; charts.dataset.loaded = "true"; });
  }

  const live = document.getElementById("live-rows");
  if (live && live.dataset.events && window.EventSource) {
    const state = document.getElementById("live-state");
    const show = (name, text) => { state.dataset.state = name; state.textContent = text; };
    const source = new EventSource(live.dataset.events);
    source.addEventListener("open", () => show("open", "live"));
    source.addEventListener("error", () => show("error", "reconnecting…"));
    source.addEventListener("spans", (event) => {
      const before = live.rows.length;
      live.insertAdjacentHTML("afterbegin", event.data);
      const added = live.rows.length - before;
      for (let i = 0; i < added; i++) live.rows[i].classList.add("fresh");
      while (live.rows.length > 500) live.deleteRow(live.rows.length - 1);
    });
    source.addEventListener("lagged", (event) => show("error", "fell behind: " + event.data + " batches skipped"));
  }
})();
