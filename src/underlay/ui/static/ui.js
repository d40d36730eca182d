// underlay dashboard: a few lines of progressive enhancement, no framework, no CDN.
// Pages work without it; with it: theme toggle, live-refreshed fragments, streamed job logs.
(function () {
  "use strict";
  var root = document.documentElement;
  var stored = null;
  try { stored = localStorage.getItem("underlay-theme"); } catch (e) { /* private mode */ }
  if (stored === "light" || stored === "dark") root.setAttribute("data-theme", stored);

  function currentTheme() {
    var set = root.getAttribute("data-theme");
    if (set) return set;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function toggleTheme() {
    var next = currentTheme() === "dark" ? "light" : "dark";
    root.setAttribute("data-theme", next);
    try { localStorage.setItem("underlay-theme", next); } catch (e) { /* ignore */ }
  }

  // <div data-refresh="/fragment/url" data-interval="5">: replaced by the fragment every N s.
  function startRefresh(el) {
    var seconds = Math.max(2, parseInt(el.getAttribute("data-interval") || "5", 10));
    var url = el.getAttribute("data-refresh");
    function tick() {
      if (document.hidden) return;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) el.innerHTML = html; })
        .catch(function () { /* keep the last good content */ });
    }
    setInterval(tick, seconds * 1000);
  }

  // <pre data-log-stream="/jobs/7/log/raw" data-offset="123">: appends new log text as it
  // comes (text nodes, never HTML), until the server says the job has finished.
  function startLog(el) {
    var url = el.getAttribute("data-log-stream");
    var offset = parseInt(el.getAttribute("data-offset") || "0", 10);
    var status = document.getElementById(el.getAttribute("data-status") || "");
    function poll() {
      fetch(url + "?offset=" + offset, { credentials: "same-origin" })
        .then(function (r) {
          if (r.status >= 400 && r.status < 500) {  // gone, or no longer ours: stop asking
            if (status) status.textContent = "The log is no longer available (HTTP " + r.status + ").";
            return null;
          }
          if (!r.ok) throw new Error("HTTP " + r.status);
          var next = parseInt(r.headers.get("X-Log-Offset") || String(offset), 10);
          var done = r.headers.get("X-Log-Done") === "1";
          return r.text().then(function (text) { return { text: text, next: next, done: done }; });
        })
        .then(function (chunk) {
          if (chunk === null) return;
          if (chunk.text) {
            var atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
            el.appendChild(document.createTextNode(chunk.text));
            if (atEnd) el.scrollTop = el.scrollHeight;
          }
          offset = chunk.next;
          el.setAttribute("data-offset", String(offset));
          if (chunk.done) {
            if (status) status.textContent = "The job has finished; the log is complete.";
            return;
          }
          setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    if (status) status.textContent = "Streaming the log…";
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-theme-toggle]").forEach(function (b) {
      b.addEventListener("click", toggleTheme);
    });
    document.querySelectorAll("[data-refresh]").forEach(startRefresh);
    document.querySelectorAll("[data-log-stream]").forEach(startLog);
  });
})();
