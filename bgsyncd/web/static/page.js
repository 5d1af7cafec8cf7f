// The status page's one script: refresh the content every 2 s, and the Retry buttons.
// No framework, no build step. The server renders every name (escaped); this
// script only swaps in what it sent, parsed as HTML by the browser's parser,
// which never runs a script it finds (and the CSP allows none inline).
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const live = document.getElementById("live");
  let busy = false;

  // Put the new content in, keeping each thumbnail whose URL is unchanged (its
  // URL names the thumbnail's version) as the same <img> node: never fetched or
  // drawn again. A broken one (a 503 while the daemon was busy) is replaced.
  function swap(page, doc) {
    const kept = new Map();
    for (const img of page.querySelectorAll("img[src]")) {
      if (!(img.complete && img.naturalWidth === 0)) kept.set(img.getAttribute("src"), img);
    }
    const reuse = [];
    for (const img of doc.body.querySelectorAll("img[src]")) {
      const old = kept.get(img.getAttribute("src"));
      if (old) {
        kept.delete(img.getAttribute("src"));
        img.removeAttribute("src"); // the placeholder asks for nothing
        reuse.push([img, old]);
      }
    }
    page.replaceChildren(...doc.body.childNodes);
    for (const [placeholder, old] of reuse) placeholder.replaceWith(old);
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const answer = await fetch("/part", { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) {
        const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
        swap(document.getElementById("page"), doc);
        live.textContent = "";
      } else {
        live.textContent = "not updated: " + answer.status;
      }
    } catch (error) {
      live.textContent = "not updated: the daemon does not answer";
    } finally {
      busy = false;
    }
  }

  async function retry(fields) {
    const answer = await fetch("/retry", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
      body: new URLSearchParams(fields),
    });
    live.textContent = answer.ok ? "" : "retry refused: " + answer.status;
    await refresh();
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (button.dataset.action === "retry") {
      button.disabled = true;
      retry({ job: button.dataset.id });
    } else if (button.dataset.action === "retry-all") {
      button.disabled = true;
      retry({ all: "1" });
    }
  });
  setInterval(refresh, REFRESH_MS);
})();
