"use strict";

// On every page of a logged-in user (see base.html): show what
// send_to_user() and broadcast() send, in the #notifications list.
(() => {
  const list = document.getElementById("notifications");

  function show(type, text) {
    const item = document.createElement("li");
    item.className = type;
    const body = document.createElement("span");
    body.textContent = text;  // text, never parsed as HTML
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.title = "Dismiss";
    dismiss.textContent = "×";
    dismiss.onclick = () => item.remove();
    item.append(body, dismiss);
    list.append(item);
  }

  liveSocket(list.dataset.socket, {
    stateElement: document.getElementById("live-state"),
    onmessage(message) {
      if (message.type === "notification" || message.type === "announcement") {
        show(message.type, message.text);
      }
    },
    onend() {
      // The session ended (a logout in another tab): show the page as it is now.
      location.reload();
    },
  });
})();
