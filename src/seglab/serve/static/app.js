// The page at /: drop or choose an image, see image | mask | overlay with the legend, an opacity slider, a download.
"use strict";

// seglab's overlay colour for the highlighted class of binary models (data/overlay.py PALETTE[1]).
const HIGHLIGHT = [230, 25, 75];
const page = { model: null, file: null, classes: null, pixels: null, width: 0, height: 0, painted: null };

async function loadModel() {
  try {
    page.model = await (await api("/v1/model")).json();
  } catch (error) {
    if (error.status === 401) {
      askForToken(error.message, loadModel);
    } else {
      setStatus(`cannot read the model: ${error.message}`, true);
    }
    return;
  }
  const m = page.model;
  const trained = m.training.epoch != null ? `, trained ${m.training.epoch} epochs` : "";
  $("model-line").textContent = `${m.source}: ${m.model || m.format}, ${m.classes.length} classes, ` +
    `${m.input.channels} channel(s)${trained}`;
  $("runs-link").hidden = !m.server.runs;
}

// Run-length encoding (values[i] repeated counts[i] times, row-major) -> Int32Array of class indices.
function decodeRunLengths(rle, size) {
  const classes = new Int32Array(size);
  let at = 0;
  rle.values.forEach((value, i) => {
    classes.fill(value, at, at + rle.counts[i]);
    at += rle.counts[i];
  });
  if (at !== size) throw new Error(`the mask holds ${at} pixels, not ${size}`);
  return classes;
}

function prepareCanvas(id) {
  const canvas = $(id);
  canvas.width = page.width;
  canvas.height = page.height;
  return canvas.getContext("2d");
}

function drawMask() {
  const context = prepareCanvas("mask-canvas");
  const picture = context.createImageData(page.width, page.height);
  const colours = page.model.classes.map((c) => c.color);
  for (let i = 0; i < page.classes.length; i++) {
    const colour = colours[page.classes[i]];
    picture.data.set([colour[0], colour[1], colour[2], 255], 4 * i);
  }
  context.putImageData(picture, 0, 0);
}

// Which pixels the overlay colours, as `seglab predict --overlay` does: every class but 0, or for
// binary models only the less frequent class.
function paintedClasses(counts) {
  if (page.model.binary) return new Set([counts[0] < counts[1] ? 0 : 1]);
  return new Set(page.model.classes.map((c) => c.index).filter((index) => index > 0));
}

function drawOverlay() {
  const alpha = Number($("opacity").value) / 100;
  $("opacity-value").textContent = alpha.toFixed(2);
  const context = prepareCanvas("overlay-canvas");
  const picture = context.createImageData(page.width, page.height);
  const colours = page.model.classes.map((c) => (page.model.binary ? HIGHLIGHT : c.color));
  for (let i = 0; i < page.classes.length; i++) {
    const k = 4 * i;
    const painted = page.painted.has(page.classes[i]);
    const colour = colours[page.classes[i]];
    for (let channel = 0; channel < 3; channel++) {
      const base = page.pixels[k + channel];
      picture.data[k + channel] = painted ? Math.round((1 - alpha) * base + alpha * colour[channel]) : base;
    }
    picture.data[k + 3] = 255;
  }
  context.putImageData(picture, 0, 0);
  $("overlay-canvas").dataset.ready = "true";
}

function drawLegend(classes) {
  const total = classes.reduce((sum, c) => sum + c.pixels, 0) || 1;
  const body = $("legend").querySelector("tbody");
  body.replaceChildren(...classes.map((c) => {
    const row = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.color.join(",")})`;
    const cells = [swatch, c.name, JSON.stringify(c.value), c.pixels.toLocaleString("en"),
      `${(100 * c.pixels / total).toFixed(1)} %`];
    cells.forEach((content) => {
      const cell = document.createElement("td");
      cell.append(content);
      row.append(cell);
    });
    return row;
  }));
}

function showImage(bitmap) {
  page.width = bitmap.width;
  page.height = bitmap.height;
  const context = prepareCanvas("image-canvas");
  context.drawImage(bitmap, 0, 0);
  page.pixels = context.getImageData(0, 0, page.width, page.height).data;
}

async function predictFile(file) {
  if (!page.model) return setStatus("the model is not loaded yet", true);
  page.file = file;
  $("overlay-canvas").dataset.ready = "false";
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    return setStatus(`${file.name}: this browser cannot show it; send TIFFs to /v1/predict with curl`, true);
  }
  setStatus(`predicting ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const result = await (await api("/v1/predict?format=json", { method: "POST", body: form })).json();
    if (result.width !== bitmap.width || result.height !== bitmap.height) {
      throw new Error(`the server saw ${result.width}x${result.height}, the browser ${bitmap.width}x${bitmap.height}`);
    }
    showImage(bitmap);
    page.classes = decodeRunLengths(result.rle, result.width * result.height);
    page.painted = paintedClasses(result.classes.map((c) => c.pixels));
    $("result").hidden = false;
    drawMask();
    drawOverlay();
    drawLegend(result.classes);
    setStatus(`${file.name}: ${result.width}x${result.height}`);
  } catch (error) {
    if (error.status === 401) return askForToken(error.message, () => predictFile(file));
    setStatus(`${file.name}: ${error.message}`, true);
  }
}

async function downloadMask() {
  const form = new FormData();
  form.append("file", page.file, page.file.name);
  try {
    const blob = await (await api("/v1/predict", { method: "POST", body: form })).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${page.file.name.replace(/\.[^.]+$/, "")}_mask.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } catch (error) {
    setStatus(`download: ${error.message}`, true);
  }
}

function watchDrops() {
  const zone = $("drop");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) predictFile(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) predictFile(event.target.files[0]);
  });
}

$("opacity").addEventListener("input", () => page.classes && drawOverlay());
$("download").addEventListener("click", downloadMask);
watchDrops();
loadModel();
