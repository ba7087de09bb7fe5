// The little the pages need JavaScript for: copying a new token, and making open dialogs modal.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const dialog of document.querySelectorAll("dialog[open]")) {
    // Reopened as modal: focus moves into it and stays there; Escape leaves for the list.
    dialog.close();
    dialog.showModal();
    dialog.addEventListener("cancel", () => {
      const back = dialog.querySelector("a[href]");
      if (back) window.location.assign(back.href);
    });
  }
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      await navigator.clipboard.writeText(field.value);
      const done = document.getElementById("copied");
      if (done) done.hidden = false;
    });
  }
});
