/* provisiond UI: confirmations, live job progress and state, with plain fetch. */
"use strict";
(function () {
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });

  // resource list: the header checkbox selects every row for a bulk action
  document.addEventListener("change", function (ev) {
    if (ev.target.id !== "select-all") return;
    document.querySelectorAll('#bulk input[name="resource"]').forEach(function (box) {
      box.checked = ev.target.checked;
    });
  });

  function fmtRate(r) { return (r / 1048576).toFixed(1) + " MiB/s"; }

  function updateJob(row, j) {
    var set = function (name, text) {
      var el = row.querySelector('[data-field="' + name + '"]');
      if (el) el.textContent = text;
    };
    row.setAttribute("data-state", j.state);
    var st = row.querySelector('[data-field="state"]');
    if (st) { st.textContent = j.state; st.className = "state state-" + j.state; }
    var bar = row.querySelector('[data-field="progress"]');
    if (bar) bar.value = j.percent;
    set("percent", j.percent);
    set("bytes", j.bytes_done + " / " + j.bytes_total + " B");
    set("rate", fmtRate(j.rate));
    set("eta", j.eta_seconds === null ? "" : Math.round(j.eta_seconds) + " s");
    set("outcome", j.outcome);
  }

  function pollJobs() {
    var rows = document.querySelectorAll('tr.job[data-state="queued"], tr.job[data-state="running"]');
    rows.forEach(function (row) {
      fetch("/api/v1/jobs/" + row.getAttribute("data-job-id"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (j) { if (j) updateJob(row, j); })
        .catch(function () {});
    });
  }

  function pollState() {
    var el = document.querySelector("[data-poll]");
    if (!el) return;
    fetch(el.getAttribute("data-poll"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (a) {
        if (!a) return;
        if (a.state !== el.textContent) {
          el.textContent = a.state; el.className = "state state-" + a.state;
        }
        (a.jobs || []).forEach(function (j) {
          var row = document.querySelector('tr.job[data-job-id="' + j.id + '"]');
          if (row) updateJob(row, j);
        });
      })
      .catch(function () {});
  }

  setInterval(function () { pollJobs(); pollState(); }, 1000);
})();
