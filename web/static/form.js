// Job forms: offer the LoRAs, VAEs, ControlNets and embeddings that fit the selected model
// (the lists per model are in #adapter-fits) and follow the model select without a reload.
// The LoRA picker (a checkbox and a weight per LoRA) writes the form's `loras` text field,
// "name:weight, name:weight", which is what is submitted. Without script the form keeps its
// server-rendered choices and the text field.
"use strict";
(function () {
  const data = document.getElementById("adapter-fits");
  if (!data) return;
  const fits = JSON.parse(data.textContent);
  const form = data.closest("form");
  const $ = (id) => document.getElementById(id);
  const model = form.elements.model;
  const lorasInput = form.elements.loras;
  const vaeSelect = form.elements.vae;
  const controlSelect = form.elements.control_model;
  const none = { loras: [], controlnets: [], vaes: [], embeddings: [] };
  const fitting = () => fits[model.value] || none;

  // What the user picked, kept across model changes: a pick that does not fit the new
  // model is left out of the submission (and said so) and comes back with a model it fits.
  const picked = new Map(); // LoRA name -> weight text ("": the default, 1)
  for (const part of lorasInput.value.split(",")) {
    const entry = part.trim();
    if (!entry) continue;
    const at = entry.indexOf(":"); // as the server reads it: name, then weight
    const name = (at < 0 ? entry : entry.slice(0, at)).trim();
    if (name) picked.set(name, at < 0 ? "" : entry.slice(at + 1).trim());
  }
  let wantedVae = vaeSelect.value;
  let wantedControl = controlSelect.value;

  function writeLoras() {
    const offered = new Set(fitting().loras);
    const used = [];
    const left = [];
    for (const [name, weight] of picked) {
      if (!offered.has(name)) left.push(name);
      else used.push(weight === "" ? name : name + ":" + weight);
    }
    lorasInput.value = used.join(", ");
    const note = $("lora-left-out");
    note.hidden = left.length === 0;
    note.textContent = left.length ? "Left out, as they do not fit this model: " + left.join(", ") : "";
  }

  function loraRow(name, index) {
    const li = document.createElement("li");
    const pick = document.createElement("label");
    pick.className = "inline";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.id = "lora-pick-" + index;
    box.checked = picked.has(name);
    pick.append(box, " " + name);
    const weightLabel = document.createElement("label");
    weightLabel.className = "inline weight";
    const weight = document.createElement("input");
    weight.type = "number";
    weight.className = "weight";
    weight.min = "-2";
    weight.max = "2";
    weight.step = "0.05";
    weight.value = picked.get(name) || "1";
    weight.disabled = !box.checked;
    weight.setAttribute("aria-label", "Weight of " + name);
    weightLabel.append("weight", weight);
    box.addEventListener("change", () => {
      weight.disabled = !box.checked;
      if (box.checked) picked.set(name, weight.value);
      else picked.delete(name);
      writeLoras();
    });
    weight.addEventListener("input", () => {
      if (!box.checked) return;
      picked.set(name, weight.value);
      writeLoras();
    });
    li.append(pick, weightLabel);
    return li;
  }

  function showLoras() {
    const names = fitting().loras;
    $("lora-choices").replaceChildren(...names.map(loraRow));
    $("lora-none").hidden = names.length > 0;
    writeLoras();
  }

  function fillSelect(select, names, wanted, noneHint) {
    const first = select.options[0]; // "the model's own" / "none": the empty value
    select.replaceChildren(first);
    for (const name of names) select.add(new Option(name, name));
    select.value = names.includes(wanted) ? wanted : "";
    $(noneHint).hidden = names.length > 0;
    if (names.length) select.removeAttribute("aria-describedby");
    else select.setAttribute("aria-describedby", noneHint);
  }

  function showEmbeddings() {
    const names = fitting().embeddings;
    const prompt = form.elements.prompt;
    $("embedding-names").textContent = names.join(", ");
    $("embeddings-hint").hidden = names.length === 0;
    if (names.length) prompt.setAttribute("aria-describedby", "embeddings-hint");
    else prompt.removeAttribute("aria-describedby");
  }

  function followModel() {
    showLoras();
    fillSelect(vaeSelect, fitting().vaes, wantedVae, "vae-none");
    fillSelect(controlSelect, fitting().controlnets, wantedControl, "control-none");
    showEmbeddings();
  }

  vaeSelect.addEventListener("change", () => { wantedVae = vaeSelect.value; });
  controlSelect.addEventListener("change", () => { wantedControl = controlSelect.value; });
  model.addEventListener("change", followModel);

  $("loras-text").hidden = true; // the picker writes it from here on
  $("lora-picker").hidden = false;
  if (model.value === data.dataset.model) showLoras(); // the selects are rendered for it
  else followModel(); // a model the browser restored (back button): follow it
})();
