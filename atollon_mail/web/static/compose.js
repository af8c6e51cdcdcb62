// The compose page: the draft is saved every 30 s when the form changed, and once more
// when the page is left; the To and Cc fields suggest addresses as they are typed.
// Without script the form still sends and "Save draft" still saves. Loaded as a file:
// the pages allow no inline script.
"use strict";

(() => {
  const form = document.querySelector("#compose form");
  if (!form) {
    return;
  }
  const draft = document.getElementById("draft");
  const status = document.getElementById("draft-status");
  const kept = document.getElementById("kept");
  const files = document.getElementById("attachments");
  const INTERVAL = 30000;
  let changed = false;
  let saving = false;
  let leaving = false; // sent or saved by a button: no draft on the way out

  form.addEventListener("input", () => {
    changed = true;
  });
  form.addEventListener("change", () => {
    changed = true;
  });
  let waiting = null; // a button pressed while a save was under way
  form.addEventListener("submit", (event) => {
    if (saving) {
      // The draft the form names is being replaced: submit once the new one is known.
      event.preventDefault();
      waiting = event.submitter;
      return;
    }
    leaving = true;
  });

  const fields = (withFiles) => {
    const data = new FormData(form);
    data.set("intent", "draft");
    data.set("autosave", "1");
    if (!withFiles) {
      data.delete("attachments");
    }
    return data;
  };

  const showKept = (attachments) => {
    kept.replaceChildren();
    for (const item of attachments) {
      const entry = document.createElement("li");
      const name = document.createElement("span");
      name.className = "filename";
      name.textContent = item.filename;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = `remove-${item.index}`;
      box.value = "1";
      const label = document.createElement("label");
      label.append(box, " remove");
      entry.append(name, ` (${item.size} bytes) `, label);
      kept.append(entry);
    }
    kept.hidden = attachments.length === 0;
  };

  const save = async () => {
    if (!changed || saving || leaving) {
      return;
    }
    saving = true;
    changed = false;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: fields(true),
        credentials: "same-origin",
      });
      const answer = await response.json();
      if (response.ok) {
        draft.value = String(answer.draft);
        files.value = ""; // in the draft now: not uploaded twice
        showKept(answer.attachments);
        // What a forward carries is among the draft's attachments from now on.
        document.getElementById("carried")?.remove();
        status.textContent = `Draft saved at ${new Date().toLocaleTimeString()}.`;
      } else {
        changed = true;
        status.textContent = Object.values(answer.errors || {}).join(" ") || "Not saved.";
      }
    } catch (problem) {
      changed = true;
      status.textContent = "The draft could not be saved now; it is tried again.";
    } finally {
      saving = false;
      if (waiting) {
        const button = waiting;
        waiting = null;
        form.requestSubmit(button);
      }
    }
  };
  window.setInterval(save, INTERVAL);

  // Leaving the page: the text goes with a beacon (files would pass its size; those
  // not saved yet are lost, the draft's earlier ones are kept).
  window.addEventListener("pagehide", () => {
    if (changed && !leaving) {
      leaving = true;
      navigator.sendBeacon(form.action, fields(false));
    }
  });

  // Address suggestions: for the address being typed after the last comma.
  for (const name of ["to", "cc"]) {
    const input = document.getElementById(name);
    const list = document.getElementById(`${name}-suggestions`);
    if (!input || !list) {
      continue;
    }
    let asked = "";
    input.addEventListener("input", async () => {
      const value = input.value;
      const cut = value.lastIndexOf(",");
      const before = cut < 0 ? "" : `${value.slice(0, cut + 1)} `;
      const prefix = value.slice(cut + 1).trim();
      if (prefix.length < 1 || prefix === asked) {
        return;
      }
      asked = prefix;
      const url = `/mail/addresses?q=${encodeURIComponent(prefix)}`;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) {
          return;
        }
        const answer = await response.json();
        if (prefix !== asked) {
          return; // an answer for what was typed before
        }
        list.replaceChildren();
        for (const item of answer.matches) {
          const option = document.createElement("option");
          option.value = before + item.label;
          list.append(option);
        }
      } catch (problem) {
        // no suggestions this time
      }
    });
  }
})();
