/* The job page: its tuning curve (Chart.js, vendored) and the cancel button.
 *
 * The curve comes from GET /v1/jobs/{id} (JobDetail.curve): drawn from the copy embedded in
 * the page, then redrawn each time the poller sees the job change. Polling stops once the
 * job has ended and its final state is on the page.
 */
(function () {
  "use strict";

  const autosched = window.autosched;
  const TERMINAL = autosched.vocabulary.terminal_job_states;
  const PALETTE = ["#2563eb", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
  const styles = JSON.parse(document.getElementById("curve-styles").textContent);
  let chart = null;

  function failureStyle(status) {
    return styles.failures[status] || styles.other;
  }

  function ended(job) {
    return TERMINAL.indexOf(job.state) >= 0;
  }

  function fmt(value, digits) {
    return value == null ? "–" : Number(value).toFixed(digits);
  }

  function datasets(job) {
    const multi = job.workloads.length > 1;
    const out = [];
    job.workloads.forEach(function (w, i) {
      const color = PALETTE[i % PALETTE.length];
      const points = job.curve.filter(function (p) {
        return p.workload_key === w.workload_key;
      });
      const prefix = multi ? w.name + ": " : "";
      out.push({
        type: "line",
        label: prefix + "best so far",
        data: points
          .filter(function (p) {
            return p.best_gflops != null;
          })
          .map(function (p) {
            return { x: p.trial, y: p.best_gflops };
          }),
        borderColor: color,
        backgroundColor: color,
        borderWidth: 2.5,
        stepped: true,
        pointRadius: 0,
        pointHitRadius: 4,
        order: 1,
      });
      out.push({
        type: "scatter",
        label: prefix + "trial",
        data: points
          .filter(function (p) {
            return p.gflops != null;
          })
          .map(function (p) {
            return { x: p.trial, y: p.gflops, latency: p.latency };
          }),
        backgroundColor: color + "55",
        borderColor: color,
        borderWidth: 1,
        pointRadius: 3.5,
        pointHoverRadius: 5,
        order: 2,
      });
    });
    // Failed trials: on the x axis, one marker and colour per kind.
    const byKind = {};
    job.curve.forEach(function (p) {
      if (p.status === "ok" && p.gflops != null) return;
      const kind = p.status || "failed";
      (byKind[kind] = byKind[kind] || []).push({ x: p.trial, y: 0, kind: kind });
    });
    Object.keys(byKind)
      .sort()
      .forEach(function (kind) {
        const style = failureStyle(kind);
        out.push({
          type: "scatter",
          label: style.label + " (" + byKind[kind].length + ")",
          data: byKind[kind],
          pointStyle: style.marker,
          borderColor: style.color,
          backgroundColor: style.color,
          borderWidth: 2,
          pointRadius: 6,
          pointHoverRadius: 8,
          clip: false,
          order: 0,
        });
      });
    return out;
  }

  function options(job) {
    const last = job.curve.length ? job.curve[job.curve.length - 1].trial : 0;
    return {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      layout: { padding: { top: 4, right: 8, bottom: 2 } },
      scales: {
        x: {
          type: "linear",
          min: 0,
          max: Math.max(job.trials_total, last, 1),
          title: { display: true, text: "trial" },
          ticks: { precision: 0 },
          grid: { color: "#eef0f3" },
        },
        y: {
          type: "linear",
          beginAtZero: true,
          grace: "8%",
          title: { display: true, text: "GFLOP/s" },
          grid: { color: "#eef0f3" },
        },
      },
      plugins: {
        legend: {
          position: "bottom",
          labels: { usePointStyle: true, boxWidth: 8, boxHeight: 8, padding: 16 },
        },
        tooltip: {
          callbacks: {
            label: function (ctx) {
              const raw = ctx.raw;
              if (raw.kind) return "trial " + raw.x + ": " + failureStyle(raw.kind).label;
              const latency = raw.latency != null ? " (" + fmt(raw.latency * 1e3, 3) + " ms)" : "";
              return ctx.dataset.label + " · trial " + raw.x + ": " + fmt(raw.y, 1) + " GFLOP/s" + latency;
            },
          },
        },
      },
    };
  }

  function draw(job) {
    const canvas = document.getElementById("curve");
    if (!canvas || !window.Chart || !job) return;
    document.getElementById("curve-empty").hidden = job.curve.length > 0;
    if (chart) {
      chart.data.datasets = datasets(job);
      chart.options = options(job);
      chart.update("none");
    } else {
      chart = new window.Chart(canvas, { data: { datasets: datasets(job) }, options: options(job) });
    }
  }

  autosched.hooks.onData = function (job) {
    draw(job);
    return !ended(job); // an ended job: one last swap, then stop
  };
  autosched.chart = function () {
    return chart;
  };

  /* ---- cancel ---- */
  function say(text, ok) {
    const el = document.getElementById("action-msg");
    el.textContent = text;
    el.className = "action-msg " + (ok ? "ok" : "err");
    el.hidden = false;
  }

  document.addEventListener("click", async function (ev) {
    const button = ev.target.closest("#cancel-btn");
    if (!button) return;
    if (!window.confirm("Cancel this job? Trials not measured yet are dropped.")) return;
    button.disabled = true;
    try {
      const res = await autosched.request(button.dataset.cancel, { method: "POST" });
      if (res.ok) {
        const job = await res.json();
        // A queued job ends at once (cancelled); a running one is flagged for its scheduler.
        say(
          ended(job)
            ? "Job cancelled."
            : "Cancel requested: the scheduler stops the job after its current batch.",
          true
        );
        autosched.poller.now();
      } else {
        say("Cancel refused: " + (await autosched.errorMessage(res)), false);
        button.disabled = false;
      }
    } catch (err) {
      say("Cancel failed: " + err.message, false);
      button.disabled = false;
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    const initial = JSON.parse(document.getElementById("job-data").textContent);
    if (initial) draw(initial);
  });
})();
