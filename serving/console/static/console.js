// The console's only script: the search button waits for a case id; face boxes are placed over the probe.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const caseId = document.getElementById("case_id");
  const button = document.getElementById("search");
  if (caseId && button) {
    const update = () => { button.disabled = caseId.value.trim() === ""; };
    caseId.addEventListener("input", update);
    update();
  }
  for (const box of document.querySelectorAll(".probe .box")) {
    for (const side of ["left", "top", "width", "height"]) box.style[side] = box.dataset[side] + "%";
  }
});
