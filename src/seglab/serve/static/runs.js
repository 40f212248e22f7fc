// The page at /runs: the run folders under --runs DIR with their curves, last metrics and report.html.
"use strict";

const runPath = (name) => `/v1/runs/${name.split("/").map(encodeURIComponent).join("/")}`;
const shown = (value) => (typeof value === "number" ? (Number.isInteger(value) ? value : value.toFixed(4)) : "–");

function cell(...content) {
  const td = document.createElement("td");
  td.append(...content);
  return td;
}

function metricsList(values) {
  const list = document.createElement("div");
  Object.entries(values).forEach(([key, value]) => {
    const line = document.createElement("div");
    line.textContent = `${key} ${shown(value)}`;
    list.append(line);
  });
  return list;
}

function runRow(run) {
  const row = document.createElement("tr");
  row.dataset.run = run.name;
  if (run.error) {
    row.append(cell(run.name), cell(run.error));
    return row;
  }
  const best = `${run.best.monitor} ${shown(run.best.value)}` + (run.best.epoch != null ? ` (epoch ${run.best.epoch})` : "");
  const ended = run.stopped_by ? `ended: ${run.stopped_by}` : "not finished";
  let curves = "–";
  if (run.curves) {
    curves = document.createElement("img");
    curves.alt = `curves of ${run.name}`;
    curves.src = `${runPath(run.name)}/curves.png`;
  }
  let report = "–";
  if (run.report) {
    report = document.createElement("a");
    report.href = `${runPath(run.name)}/report.html`;
    report.target = "_blank";
    report.textContent = "report.html";
  }
  row.append(cell(run.name), cell(`${run.model}, ${run.evaluations} evaluations`, document.createElement("br"), ended),
    cell(metricsList(run.last)), cell(best), cell(curves), cell(report));
  return row;
}

async function loadRuns() {
  let listing;
  try {
    listing = await (await api("/v1/runs")).json();
  } catch (error) {
    if (error.status === 401) return askForToken(error.message, loadRuns);
    return setStatus(`cannot list the runs: ${error.message}`, true);
  }
  $("root").textContent = listing.root;
  $("runs").querySelector("tbody").replaceChildren(...listing.runs.map(runRow));
  $("runs").hidden = listing.runs.length === 0;
  setStatus(listing.runs.length ? `${listing.runs.length} runs` : `no run folders under ${listing.root}`);
}

loadRuns();
