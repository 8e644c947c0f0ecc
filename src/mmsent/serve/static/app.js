// The page: pick or drop an image, type the text, POST both to /predict, show the tag and the class bars.
"use strict";
const $ = (id) => document.getElementById(id);
const LABELS = ["negative", "neutral", "positive"];
let imageFile = null;

function showImage(file) {
  imageFile = file;
  $("thumb").src = URL.createObjectURL(file);
  $("thumb").hidden = false;
  $("drop-hint").textContent = file.name;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
}

function showResult(result) {
  $("error").hidden = true;
  $("tag").textContent = result.tag;
  $("tag").className = "tag " + result.tag;
  const bars = $("bars");
  bars.replaceChildren();
  for (const label of LABELS) {
    const p = result.probabilities[label];
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.label = label;
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill " + label;
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = (100 * p).toFixed(1) + "%";
    row.append(name, track, value);
    bars.append(row);
  }
  $("result").hidden = false;
}

$("image").addEventListener("change", (e) => { if (e.target.files[0]) showImage(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) showImage(e.dataTransfer.files[0]);
});

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!imageFile) return showError("Choose an image first.");
  if (!$("text").value.trim()) return showError("Type the text of the post.");
  const body = new FormData();
  body.append("image", imageFile);
  body.append("text", $("text").value);
  $("submit").disabled = true;
  try {
    const response = await fetch("/predict", { method: "POST", body });
    const data = await response.json();
    if (!response.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      showError(detail || response.statusText);
    } else {
      showResult(data);
    }
  } catch (err) {
    showError("The service did not answer: " + err);
  } finally {
    $("submit").disabled = false;
  }
});

fetch("/model").then((r) => r.json()).then((m) => {
  $("model-name").textContent = "Model: " + m.name + " (" + m.encoders.join(" + ") + ").";
}).catch(() => {});
