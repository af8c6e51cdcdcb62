// A mailbox's page: the filter above "Store messages to" narrows the folders and
// projects to those whose name or owner has every word typed, and chooses the first
// of them when the chosen one no longer matches. Without script the list is a plain
// <select>. Loaded as a file: the pages allow no inline script.
"use strict";

(() => {
  const filter = document.getElementById("store_to_filter");
  const list = document.getElementById("store_to");
  const none = document.getElementById("store_to_none");
  if (!filter || !list) {
    return;
  }
  filter.hidden = false;
  filter.addEventListener("input", () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const matches = (option) => words.every((word) => (option.dataset.text || "").includes(word));
    const shown = Array.from(list.options).filter(matches);
    const chosen = list.options[list.selectedIndex];
    if (shown.length && !(chosen && matches(chosen))) {
      list.value = shown[0].value;
    }
    for (const option of list.options) {
      // The chosen one always stays: the form never sends what cannot be seen.
      option.hidden = !option.selected && !matches(option);
    }
    for (const group of list.querySelectorAll("optgroup")) {
      group.hidden = Array.from(group.children).every((option) => option.hidden);
    }
    none.hidden = shown.length > 0;
  });
})();
