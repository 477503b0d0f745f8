// Mask painter: paint white on a canvas over the uploaded image; on submit the
// canvas becomes the form's mask file (unless a mask file was chosen).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("edit-form");
  const imageInput = $("image-file");
  const maskInput = $("mask-file");
  const painter = $("painter");
  const source = $("source");
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let painted = false;
  let drawing = false;
  let last = null;

  function fill(color) {
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = color;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  imageInput.addEventListener("change", () => {
    const file = imageInput.files[0];
    if (!file) { painter.hidden = true; return; }
    const url = URL.createObjectURL(file);
    source.onload = () => {
      canvas.width = source.naturalWidth;
      canvas.height = source.naturalHeight;
      fill("#000");
      painted = false;
      painter.hidden = false;
    };
    source.src = url;
  });

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (canvas.width / rect.width),
      y: (event.clientY - rect.top) * (canvas.height / rect.height),
    };
  }

  function stroke(from, to) {
    const size = Number($("brush").value) * (canvas.width / canvas.getBoundingClientRect().width);
    ctx.globalCompositeOperation = "source-over";
    ctx.strokeStyle = ctx.fillStyle = $("eraser").checked ? "#000" : "#fff";
    ctx.lineWidth = size;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    painted = true;
  }

  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const name of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(name, () => { drawing = false; });
  }

  $("brush").addEventListener("input", () => { $("brush-size").textContent = $("brush").value; });
  $("clear").addEventListener("click", () => { fill("#000"); painted = false; });
  $("invert").addEventListener("click", () => {
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < data.data.length; i += 4) {
      data.data[i] = 255 - data.data[i];
      data.data[i + 1] = 255 - data.data[i + 1];
      data.data[i + 2] = 255 - data.data[i + 2];
    }
    ctx.putImageData(data, 0, 0);
    painted = true;
  });

  form.addEventListener("submit", (event) => {
    const masked = form.querySelector("input[name=type]:checked").dataset.mask === "true"; // kinds with a mask
    if (!masked || maskInput.files.length || !painted || painter.hidden) return;
    event.preventDefault();
    canvas.toBlob((blob) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([blob], "mask.png", { type: "image/png" }));
      maskInput.files = transfer.files;
      form.submit();
    }, "image/png");
  });
})();
