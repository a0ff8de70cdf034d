// The console's only script: the search button waits for a case id; boxes on the probe pick a face.
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
    box.addEventListener("click", (event) => {
      event.preventDefault();
      for (const face of document.querySelectorAll("section.face")) face.hidden = face.id !== "face-" + box.dataset.face;
    });
  }
});
