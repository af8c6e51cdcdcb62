// A campaign's page: keeps its progress up to date without reloading, and asks before
// the controls that cannot be undone. Loaded as a file: the pages allow no inline script.
"use strict";

(() => {
  const POLL_MILLISECONDS = 1000;
  // Only these change by themselves; draft waits for Send, the others are over.
  const LIVE = new Set(["running", "paused"]);

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }

  const panel = document.querySelector("[data-status-url]");
  if (!panel) {
    return;
  }
  const url = panel.dataset.statusUrl;

  const setText = (selector, value) => {
    for (const element of document.querySelectorAll(selector)) {
      element.textContent = String(value);
    }
  };

  const show = (status) => {
    panel.dataset.status = status.status;
    setText('[data-field="status"]', status.status);
    for (const element of document.querySelectorAll(".campaign-status[data-field]")) {
      element.className = `campaign-status status-${status.status}`;
    }
    for (const [state, count] of Object.entries(status.counts)) {
      setText(`[data-count="${state}"]`, count);
    }
    for (const field of ["percent", "done", "total", "uncertain", "rate_text"]) {
      setText(`[data-field="${field}"]`, status[field]);
    }
    const bar = panel.querySelector("progress");
    if (bar) {
      bar.max = Math.max(status.total, 1);
      bar.value = status.done;
      bar.textContent = `${status.percent}%`;
    }
    // The controls the server would offer for this status (see CONTROLS in the pages).
    for (const form of document.querySelectorAll("form[data-when]")) {
      let offered = form.dataset.when.split(" ").includes(status.status);
      if (form.hasAttribute("data-when-failed")) {
        offered = offered && status.counts.failed > 0;
      }
      form.hidden = !offered;
    }
  };

  const stopped = (why) => {
    setText('[data-field="rate_text"]', why);
  };

  const poll = async () => {
    let status;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const kind = response.headers.get("content-type") || "";
      if (!response.ok || !kind.startsWith("application/json")) {
        // Logged out (the login page answers) or the campaign is gone: a reload tells.
        stopped("Updates stopped; reload the page.");
        return;
      }
      status = await response.json();
    } catch {
      // The appliance did not answer (restarting, say): try again.
      window.setTimeout(poll, POLL_MILLISECONDS);
      return;
    }
    show(status);
    if (LIVE.has(status.status)) {
      window.setTimeout(poll, POLL_MILLISECONDS);
    }
  };

  if (LIVE.has(panel.dataset.status)) {
    window.setTimeout(poll, POLL_MILLISECONDS);
  }
})();
