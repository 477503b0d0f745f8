// Live job page: polls the job object and renders status, progress and images.
"use strict";
(function () {
  const root = document.getElementById("job");
  const url = root.dataset.jobUrl;
  const terminal = new Set(["succeeded", "failed", "canceled"]);
  const $ = (id) => document.getElementById(id);

  function renderParams(job) {
    const table = $("params");
    table.replaceChildren();
    const rows = Object.entries({ type: job.type, model: job.model, ...job.params });
    for (const [key, value] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = String(value);
    }
  }

  function renderImages(job) {
    const box = $("images");
    if (box.childElementCount === job.outputs.length) return;
    box.replaceChildren();
    for (const out of job.outputs) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = out.url;
      img.alt = "output " + out.index + ", seed " + out.seed;
      img.width = out.width;
      img.height = out.height;
      img.className = "output";
      const cap = document.createElement("figcaption");
      cap.textContent = "seed " + out.seed;
      fig.append(img, cap);
      box.append(fig);
    }
  }

  function render(job) {
    $("status").textContent = job.status;
    $("status").dataset.status = job.status;
    $("queue").textContent = job.queue_position != null ? "(position " + job.queue_position + " in queue)" : "";
    const pct = Math.round(job.progress.fraction * 100);
    $("bar").style.width = pct + "%";
    $("bar").setAttribute("aria-valuenow", String(pct));
    $("steps").textContent = "step " + job.progress.step + " of " + job.progress.total;
    if (job.error) {
      $("error").hidden = false;
      $("error").textContent = job.error.code + ": " + job.error.message;
    }
    renderParams(job);
    renderImages(job);
  }

  async function poll() {
    let delay = 500;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (terminal.has(job.status)) return;
      } else {
        delay = 2000;
      }
    } catch (err) {
      delay = 2000;
    }
    setTimeout(poll, delay);
  }
  poll();
})();
