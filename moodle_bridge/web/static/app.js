// Live progress for the jobs list and a job's page: polls progress.json while some job on the
// page is still sending. The pages are complete without this script; it only refreshes figures.
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = new URL("../progress.json", script ? script.src : window.location.href);
  var INTERVAL_MS = 2000;

  function activeIds() {
    var ids = [];
    document.querySelectorAll(".progress[data-job]").forEach(function (el) {
      if (el.getAttribute("data-terminal") !== "1") ids.push(el.getAttribute("data-job"));
    });
    return ids;
  }

  function setText(root, field, text) {
    var el = root.querySelector('[data-field="' + field + '"]');
    if (el) el.textContent = text;
  }

  function fmt(n) {
    return Number(n).toLocaleString("en");
  }

  function apply(job) {
    document.querySelectorAll('.progress[data-job="' + job.id + '"]').forEach(function (el) {
      var bar = el.querySelector("progress");
      if (bar) {
        bar.max = job.total || 1;
        bar.value = job.total ? job.done : 1;
        bar.textContent = job.percent.toFixed(1) + "%";
      }
      setText(el, "percent", job.percent.toFixed(1) + "%");
      setText(el, "done", fmt(job.done));
      setText(el, "total", fmt(job.total));
      setText(el, "rate", job.rate_per_minute === null ? "–" : job.rate_per_minute.toFixed(1));
      setText(el, "eta", job.eta);
      el.setAttribute("data-terminal", job.terminal ? "1" : "0");
    });
    document.querySelectorAll('[data-job-status="' + job.id + '"]').forEach(function (el) {
      el.textContent = job.status;
      el.className = "status s-" + job.status;
    });
    Object.keys(job.counters).forEach(function (name) {
      document.querySelectorAll('[data-counter="' + job.id + ":" + name + '"]').forEach(function (el) {
        el.textContent = fmt(job.counters[name]);
      });
    });
  }

  function poll() {
    var ids = activeIds();
    if (!ids.length) return;
    endpoint.search = "?ids=" + ids.join(",");
    fetch(endpoint.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        data.jobs.forEach(apply);
        window.setTimeout(poll, INTERVAL_MS);
      })
      .catch(function () {
        window.setTimeout(poll, INTERVAL_MS * 5);
      });
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
