// Milepost web catalog: progressive enhancement only. Every page works without this file.
"use strict";

(function () {
  const FINAL = ["READY", "FAILED", "RELEASED", "EXPIRED"];

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Math.max(0, n), u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    if (u === 0) return Math.round(v) + " B";
    return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " " + units[u];
  }

  function formatDuration(s) {
    s = Math.max(0, Math.round(s));
    if (s >= 3600) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return s + "s";
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // Live progress: polls the page's own JSON view of the reservation (read through the API
  // with the session's token) and reloads once it settles, to show where the data is.
  function watchProgress() {
    const panel = document.getElementById("progress");
    if (!panel || FINAL.includes(panel.dataset.state)) return;
    const bar = document.getElementById("progress-bar");
    let last = null, rate = 0;
    async function tick() {
      let r;
      try {
        const response = await fetch("/reservations/" + encodeURIComponent(panel.dataset.id) + "/progress",
          { headers: { accept: "application/json" }, credentials: "same-origin" });
        if (!response.ok) throw new Error(String(response.status));
        r = await response.json();
      } catch (e) {
        setTimeout(tick, 3000);
        return;
      }
      const now = performance.now();
      if (last && now > last.at) {
        const instant = (r.bytesDone - last.bytes) / ((now - last.at) / 1000);
        rate = rate === 0 ? instant : 0.7 * rate + 0.3 * instant;
      }
      last = { at: now, bytes: r.bytesDone };
      bar.max = Math.max(1, r.bytesTotal);
      bar.value = r.bytesDone;
      bar.textContent = Math.round((100 * r.bytesDone) / Math.max(1, r.bytesTotal)) + "%";
      setText("bytes-done", formatBytes(r.bytesDone));
      setText("bytes-total", formatBytes(r.bytesTotal));
      setText("objects-done", String(r.objectsDone));
      setText("objects-total", String(r.objectsTotal));
      setText("bytes-upstream", formatBytes(r.bytesFromUpstream));
      setText("bytes-local", formatBytes(Math.max(0, r.bytesDone - r.bytesFromUpstream)));
      setText("rate", formatBytes(rate) + "/s");
      const left = r.bytesTotal - r.bytesDone;
      setText("eta", left <= 0 ? "done" : rate > 0 ? formatDuration(left / rate) : "unknown");
      const state = document.getElementById("res-state");
      if (state) { state.textContent = r.state; state.className = "state " + r.state.toLowerCase(); }
      if (FINAL.includes(r.state)) {
        location.reload();
      } else {
        setTimeout(tick, 700);
      }
    }
    tick();
  }

  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const code = document.getElementById(button.dataset.copy);
        if (!code) return;
        try {
          await navigator.clipboard.writeText(code.textContent);
          button.textContent = "Copied";
        } catch (e) {
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        }
        setTimeout(function () { button.textContent = "Copy"; }, 2000);
      });
    });
  }

  // "Copy URL" of an MCAP log: a presigned /data URL, asked for on click (never rendered
  // into the page), copied, or shown to copy by hand where the clipboard is not allowed.
  function presignButtons() {
    document.querySelectorAll("button.copy-url[data-presign]").forEach(function (button) {
      button.addEventListener("click", async function () {
        let url;
        try {
          const response = await fetch(button.dataset.presign, { credentials: "same-origin" });
          if (!response.ok) throw new Error(String(response.status));
          url = await response.text();
        } catch (e) {
          button.textContent = "Failed";
          setTimeout(function () { button.textContent = "Copy URL"; }, 2000);
          return;
        }
        try {
          await navigator.clipboard.writeText(url);
          button.textContent = "Copied";
        } catch (e) {
          window.prompt("Presigned URL (valid 12 hours)", url);
        }
        setTimeout(function () { button.textContent = "Copy URL"; }, 2000);
      });
    });
  }

  // Autocomplete of field names and, after `field:`, of the values the facets know.
  function autocomplete() {
    const input = document.getElementById("q");
    const list = document.getElementById("q-suggestions");
    const dataEl = document.getElementById("ac-data");
    if (!input || !list || !dataEl) return;
    let data;
    try { data = JSON.parse(dataEl.textContent); } catch (e) { return; }
    let items = [], active = -1;

    function currentToken() {
      const caret = input.selectionStart || input.value.length;
      const before = input.value.slice(0, caret);
      const start = Math.max(before.lastIndexOf(" "), before.lastIndexOf("\t")) + 1;
      return { start: start, end: caret, text: before.slice(start) };
    }

    function close() {
      list.hidden = true; list.innerHTML = ""; items = []; active = -1;
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
    }

    function quote(value) { return /^[\w\-./+@]+$/.test(value) ? value : '"' + value + '"'; }

    function suggest() {
      const token = currentToken();
      let text = token.text, negate = "";
      if (text.startsWith("-")) { negate = "-"; text = text.slice(1); }
      const lower = text.toLowerCase();
      let found = [];
      const colon = lower.indexOf(":");
      if (colon > 0) {
        const field = lower.slice(0, colon), prefix = lower.slice(colon + 1).replace(/^"/, "");
        found = (data.values[field] || [])
          .filter(function (v) { return v.toLowerCase().startsWith(prefix) && v.toLowerCase() !== prefix; })
          .slice(0, 8)
          .map(function (v) { return { label: field + ":" + v, insert: negate + field + ":" + quote(v) + " " }; });
      } else if (lower.length > 0) {
        found = data.fields
          .filter(function (f) { return f.startsWith(lower); })
          .map(function (f) { return { label: f + ":", insert: negate + f + ":" }; });
      }
      if (found.length === 0) { close(); return; }
      items = found; active = -1;
      list.innerHTML = "";
      found.forEach(function (item, i) {
        const li = document.createElement("li");
        li.id = "q-option-" + i;
        li.setAttribute("role", "option");
        li.textContent = item.label;
        li.addEventListener("mousedown", function (e) { e.preventDefault(); accept(i); });
        list.appendChild(li);
      });
      list.hidden = false;
      input.setAttribute("aria-expanded", "true");
    }

    function highlight(i) {
      active = i;
      Array.from(list.children).forEach(function (li, j) { li.setAttribute("aria-selected", String(j === i)); });
      if (i >= 0) input.setAttribute("aria-activedescendant", "q-option-" + i);
    }

    function accept(i) {
      const token = currentToken();
      const item = items[i];
      input.value = input.value.slice(0, token.start) + item.insert + input.value.slice(token.end);
      const caret = token.start + item.insert.length;
      input.setSelectionRange(caret, caret);
      close();
      input.focus();
      if (item.insert.endsWith(":")) suggest();
    }

    input.addEventListener("input", suggest);
    input.addEventListener("blur", function () { setTimeout(close, 100); });
    input.addEventListener("keydown", function (e) {
      if (list.hidden) return;
      if (e.key === "ArrowDown") { e.preventDefault(); highlight((active + 1) % items.length); }
      else if (e.key === "ArrowUp") { e.preventDefault(); highlight((active - 1 + items.length) % items.length); }
      else if ((e.key === "Enter" || e.key === "Tab") && active >= 0) { e.preventDefault(); accept(active); }
      else if (e.key === "Escape") { close(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    watchProgress();
    copyButtons();
    presignButtons();
    autocomplete();
  });
})();
