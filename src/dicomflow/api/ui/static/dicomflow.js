// dicomflow web UI: the little JavaScript the pages need besides htmx (viewer.js has the viewer).
"use strict";

// Polling fragments (hx-trigger="every 2s [dicomflowLive()]") stop while "Pause" is checked.
window.dicomflowLive = function () {
  const pause = document.getElementById("pause-live");
  return !(pause && pause.checked) && !document.hidden;
};

// The tag dump's filter: hides the rows that do not contain the text typed.
document.addEventListener("input", function (event) {
  const input = event.target;
  if (!(input instanceof HTMLInputElement) || input.id !== "tag-filter") return;
  const needle = input.value.trim().toLowerCase();
  const rows = document.querySelectorAll("#tag-table tbody tr");
  let shown = 0;
  rows.forEach(function (row) {
    const match = !needle || row.textContent.toLowerCase().includes(needle);
    row.hidden = !match;
    if (match) shown += 1;
  });
  const count = document.getElementById("tag-count");
  if (count) count.textContent = shown + " of " + rows.length + " rows";
});

// The study page: the series whose instances are listed is the highlighted one.
document.addEventListener("htmx:afterSettle", function (event) {
  const list = document.getElementById("instances");
  if (!list || !list.contains(event.target)) return;
  document.querySelectorAll(".series-card").forEach(function (card) {
    card.classList.toggle("selected", card.dataset.series === list.dataset.series);
  });
});
