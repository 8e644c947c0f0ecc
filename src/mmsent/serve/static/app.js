// The page: pick or drop an image and/or type the text, POST them to /predict, show the tag, the class bars,
// what the text alone and the image alone say, and the sentence that explains the answer.
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

function probabilityBar(label, p) {
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
  return row;
}

// One small stacked bar per side: the three class probabilities of the text alone (or the image alone).
function viewBar(side, view) {
  const row = document.createElement("div");
  row.className = "view-row";
  row.dataset.side = side;
  row.dataset.tag = view.tag;
  const name = document.createElement("span");
  name.textContent = side + " alone";
  const track = document.createElement("div");
  track.className = "view-track";
  for (const label of LABELS) {
    const part = document.createElement("div");
    part.className = "bar-fill " + label;
    part.style.width = (100 * view.probabilities[label]).toFixed(1) + "%";
    part.title = label + " " + (100 * view.probabilities[label]).toFixed(1) + "%";
    track.append(part);
  }
  const tag = document.createElement("span");
  tag.className = "tag " + view.tag;
  tag.textContent = view.tag;
  row.append(name, track, tag);
  return row;
}

function showResult(result) {
  $("error").hidden = true;
  $("tag").textContent = result.tag;
  $("tag").className = "tag " + result.tag;
  $("bars").replaceChildren(...LABELS.map((label) => probabilityBar(label, result.probabilities[label])));
  const sides = Object.keys(result.views || {});
  $("view-bars").replaceChildren(...sides.map((side) => viewBar(side, result.views[side])));
  $("views").hidden = sides.length === 0;
  $("explanation").textContent = result.explanation || "";
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
  const text = $("text").value.trim();
  if (!imageFile && !text) return showError("Choose an image, type the text of the post, or both.");
  const body = new FormData();
  if (imageFile) body.append("image", imageFile);
  if (text) body.append("text", text);
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
