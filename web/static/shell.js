/* provisiond web shell: xterm.js fed by long-poll GETs, keystrokes sent by POST. */
"use strict";
(function () {
  var box = document.getElementById("terminal");
  var status = document.getElementById("shell-status");
  var errBox = document.getElementById("shell-error");
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  var sid = null, offset = 0, closed = false;
  var queue = "", sending = false;

  function post(url, body) {
    return fetch(url, { method: "POST", credentials: "same-origin", body: body,
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/octet-stream" } });
  }
  function fail(msg) {
    errBox.textContent = msg; errBox.hidden = false; status.textContent = "closed";
    closed = true;
  }
  function b64bytes(s) {
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function poll() {
    if (closed) return;
    fetch("/shell/" + sid + "/output?since=" + offset, { credentials: "same-origin" })
      .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
      .then(function (res) {
        var j = res[1];
        if (!res[0]) { fail(j.error || "the shell ended"); return; }
        if (j.data) term.write(b64bytes(j.data));
        offset = j.next;
        if (j.closed) { fail("The shell ended: " + j.reason); return; }
        poll();
      })
      .catch(function () { setTimeout(poll, 1000); });
  }
  function flush() {
    if (sending || !queue || closed) return;
    var data = new TextEncoder().encode(queue);
    queue = ""; sending = true;
    post("/shell/" + sid + "/input", data).then(function (r) {
      sending = false;
      if (!r.ok) r.json().then(function (j) { fail(j.error); }); else flush();
    });
  }
  function resize() {
    fit.fit();
    if (sid) post("/shell/" + sid + "/resize?cols=" + term.cols + "&rows=" + term.rows, "");
  }

  post(box.getAttribute("data-open"), "")
    .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
    .then(function (res) {
      if (!res[0]) { fail(res[1].error || "cannot open the shell"); return; }
      sid = res[1].id;
      status.textContent = "connected to " + res[1].target;
      box.setAttribute("data-session", sid);
      resize();
      term.focus();
      poll();
    });
  term.onData(function (d) { queue += d; flush(); });
  window.addEventListener("resize", resize);
  document.getElementById("shell-close").addEventListener("click", function () {
    if (sid) post("/shell/" + sid + "/close", "");
    fail("closed");
  });
  window.provisiondShell = { send: function (text) { queue += text; flush(); },
    text: function () {
      var b = term.buffer.active, lines = [];
      for (var i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join("\n");
    } };
})();
