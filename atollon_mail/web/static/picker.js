// A filter above a list to choose from (<input data-filter-for="ID"> above <select
// id="ID">): typing narrows the options to those whose data-text has every word typed,
// and chooses the first of them when the chosen one no longer matches; ID_none says
// when none does. As mailbox.js does for "Store messages to"; without script the list
// is a plain <select>. Loaded as a file: the pages allow no inline script.
"use strict";

(() => {
  for (const filter of document.querySelectorAll("input[data-filter-for]")) {
    const list = document.getElementById(filter.dataset.filterFor);
    const none = document.getElementById(`${filter.dataset.filterFor}_none`);
    if (!list) {
      continue;
    }
    filter.hidden = false;
    filter.addEventListener("input", () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      const matches = (option) =>
        words.every((word) => (option.dataset.text || "").includes(word));
      const shown = Array.from(list.options).filter(matches);
      const chosen = list.options[list.selectedIndex];
      if (shown.length && !(chosen && matches(chosen))) {
        list.value = shown[0].value;
      }
      for (const option of list.options) {
        // The chosen one always stays: the form never sends what cannot be seen.
        option.hidden = !option.selected && !matches(option);
      }
      if (none) {
        none.hidden = shown.length > 0;
      }
    });
  }
})();
