// A mailbox's message list keeps itself current: the page listens to the mailbox's event
// stream (/mail/events). When mail is filed into the folder shown, and the page shows
// the newest messages, the list is fetched again and put in place of the old one (what
// was ticked stays ticked); the inbox's unread count is shown in the page's title.
// Loaded as a file: the pages allow no inline script.
"use strict";

(() => {
  const script = document.currentScript;
  const list = document.getElementById("messages");
  if (!script || !list || !window.EventSource) {
    return;
  }
  const address = script.dataset.address;
  const folder = script.dataset.folder;
  const newest = script.dataset.page === "1";
  const title = document.title.replace(/^\(\d+\) /, "");
  let loading = false;
  let again = false;

  const replaceList = async () => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("messages");
        const current = document.getElementById("messages");
        if (fresh && current) {
          const ticked = Array.from(current.querySelectorAll("input:checked"), (box) => `${box.name}=${box.value}`);
          for (const box of fresh.querySelectorAll("input[type=checkbox]")) {
            box.checked = ticked.includes(`${box.name}=${box.value}`);
          }
          current.replaceWith(document.adoptNode(fresh));
          document.dispatchEvent(new CustomEvent("mail:list-replaced"));
        }
      }
    } finally {
      loading = false;
      if (again) {
        again = false;
        replaceList();
      }
    }
  };

  let wait = 30000;
  const listen = () => {
    const source = new EventSource(`/mail/events?address=${encodeURIComponent(address)}`);
    source.addEventListener("open", () => {
      wait = 30000;
    });
    source.addEventListener("filed", (event) => {
      if (newest && JSON.parse(event.data).folder === folder) {
        replaceList();
      }
    });
    // News of other nodes may have been lost (one box of several lost its database
    // connection for a while): whatever folder is shown, it is read again.
    source.addEventListener("missed", () => {
      if (newest) {
        replaceList();
      }
    });
    source.addEventListener("unread", (event) => {
      const count = JSON.parse(event.data).unread;
      document.title = count > 0 ? `(${count}) ${title}` : title;
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself after a network error; after a refusal (too
      // many open pages: 503; logged out: 404) it gives up: ask again later, less often
      // each time.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(listen, wait);
        wait = Math.min(wait * 2, 600000);
      }
    });
  };
  listen();
})();
