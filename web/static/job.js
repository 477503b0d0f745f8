// Live job page: follows the job's event stream (falling back to polling the job object)
// and renders status, queue, ETA, progress, the live preview, images and whether the job
// waits for a worker serving its model.
"use strict";
(function () {
  const root = document.getElementById("job");
  const url = root.dataset.jobUrl;
  const cancelUrl = root.dataset.cancelUrl;
  const eventsUrl = root.dataset.eventsUrl;
  const terminal = new Set(["succeeded", "failed", "canceled"]);
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let stream = null;

  // A parameter as text: loras as the form writes them ("name:weight, ..."), control as
  // "model edges, scale 1".
  function shown(value) {
    if (Array.isArray(value)) return value.map(shown).join(", ");
    if (value && typeof value === "object") {
      if ("name" in value && "weight" in value) return value.name + ":" + value.weight;
      return Object.entries(value).map(([k, v]) => k + " " + shown(v)).join(", ");
    }
    return String(value);
  }

  function fillTable(table, entries) {
    table.replaceChildren();
    for (const [key, value] of entries) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = shown(value);
    }
  }

  function renderImages(job) {
    const box = $("images");
    if (box.childElementCount === job.outputs.length && !job.outputs_pruned_at) return;
    box.replaceChildren();
    if (job.outputs_pruned_at) return; // deleted by retention: the notice says so
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

  function renderInputs(job) {
    const box = $("inputs");
    const names = Object.keys(job.inputs || {});
    if (!names.length || job.inputs_pruned_at || box.childElementCount === names.length) return;
    $("inputs-section").hidden = false;
    box.replaceChildren();
    for (const name of names) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = job.inputs[name];
      img.alt = "input " + name;
      img.className = "input-" + name;
      const cap = document.createElement("figcaption");
      cap.textContent = name;
      fig.append(img, cap);
      box.append(fig);
    }
  }

  function renderPreview(job) {
    const img = $("preview");
    const show = job.preview && !terminal.has(job.status);
    $("preview-section").hidden = !show;
    if (show && img.dataset.step !== String(job.preview.step)) {
      img.src = job.preview.url;
      img.dataset.step = String(job.preview.step);
      $("preview-step").textContent = "preview at step " + job.preview.step;
    }
  }

  function seconds(value) {
    return value == null ? "" : value.toFixed(value < 10 ? 2 : 1) + " s";
  }

  function render(job) {
    $("status").textContent = job.status + (job.cancel_requested && !terminal.has(job.status) ? " (canceling)" : "");
    $("status").dataset.status = job.status;
    $("queue").textContent = job.queue_position != null ? "· position " + job.queue_position + " in queue" : "";
    $("eta").textContent = job.eta_seconds != null ? "· about " + seconds(job.eta_seconds) + " left" : "";
    const pct = Math.round(job.progress.fraction * 100);
    $("bar").style.width = pct + "%";
    $("bar").setAttribute("aria-valuenow", String(pct));
    $("steps").textContent = "step " + job.progress.step + " of " + job.progress.total;
    $("waiting").hidden = !job.waiting_for_worker;
    $("waiting").textContent = job.waiting_for_worker
      ? "No worker serving model " + job.model + " is running; the job waits until one starts."
      : "";
    $("cancel").hidden = terminal.has(job.status);
    if (job.error) {
      $("error").hidden = false;
      $("error").textContent = job.error.code + ": " + job.error.message;
    }
    const pruned = [];
    if (job.outputs_pruned_at) pruned.push("images (" + job.outputs.length + ")");
    if (job.inputs_pruned_at) pruned.push("input image and mask");
    $("pruned").hidden = !pruned.length;
    $("pruned").textContent = pruned.length
      ? "This job's " + pruned.join(" and ") + " were deleted by the retention policy on " +
        new Date(job.outputs_pruned_at || job.inputs_pruned_at).toLocaleString() +
        "; its parameters and seeds remain below."
      : "";
    fillTable($("params"), Object.entries({ type: job.type, model: job.model, ...job.params }));
    const t = job.timings || {};
    const rows = [["attempts", job.attempts]];
    if (t.queue_seconds != null) rows.push(["queue wait", seconds(t.queue_seconds)]);
    if (t.run_seconds != null) rows.push(["run time", seconds(t.run_seconds)]);
    if (t.generate_seconds != null) rows.push(["denoising", seconds(t.generate_seconds)]);
    if (t.load_seconds != null) rows.push(["model load", seconds(t.load_seconds)]);
    fillTable($("timings"), rows);
    renderPreview(job);
    renderImages(job);
    renderInputs(job);
    const reuse = new URL($("reuse").href);
    reuse.pathname = JSON.parse($("reuse").dataset.forms || "{}")[job.type] || "/"; // the kind's form
    $("reuse").href = reuse.toString();
  }

  // The event stream: each event carries the job object; "done" is the last. A stream that
  // cannot be opened (429, an old server, no EventSource) falls back to polling.
  function follow() {
    if (!eventsUrl || !window.EventSource) return poll();
    stream = new EventSource(eventsUrl);
    const onEvent = (event) => render(JSON.parse(event.data));
    stream.addEventListener("status", onEvent);
    stream.addEventListener("progress", onEvent);
    stream.addEventListener("done", (event) => {
      stream.close();
      stream = null;
      onEvent(event);
    });
    stream.onerror = () => {
      // CONNECTING: the browser reconnects by itself with Last-Event-ID; CLOSED: refused.
      if (stream && stream.readyState === EventSource.CLOSED) {
        stream = null;
        poll();
      }
    };
  }

  async function poll() {
    let delay = 400;
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
    timer = setTimeout(poll, delay);
  }

  $("cancel").addEventListener("click", async () => {
    $("cancel").disabled = true;
    const token = document.querySelector("meta[name=csrf-token]").content;
    const response = await fetch(cancelUrl, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRFToken": token },
    });
    const body = await response.json();
    if (response.ok) {
      render(body);
    } else if (body.error) {
      $("error").hidden = false;
      $("error").textContent = body.error.message;
    }
    $("cancel").disabled = false;
    if (!stream) {
      clearTimeout(timer);
      poll();
    }
  });

  follow();
})();
