"use strict";

// A chat room's page: shows what the room's websocket sends, and sends what
// the user types. Messages are JSON; see chat/views.py.
(() => {
  const {socket: path, user: me} = JSON.parse(document.getElementById("chat").textContent);
  const log = document.getElementById("log");
  const form = document.getElementById("send");
  const input = document.getElementById("text");

  // Every piece of text goes in with textContent: never parsed as HTML.
  function append(className, ...parts) {
    const item = document.createElement("li");
    item.className = className;
    for (const [partClass, text] of parts) {
      const part = document.createElement("span");
      part.className = partClass;
      part.textContent = text;
      item.append(part);
    }
    log.append(item);
    item.scrollIntoView({block: "nearest"});
  }

  const socket = liveSocket(path, {
    stateElement: document.getElementById("room-state"),
    onmessage(message) {
      switch (message.type) {
        case "message":
          append(message.user === me ? "message mine" : "message",
                 ["user", message.user], ["text", message.text]);
          break;
        case "join":
          append("notice", ["user", message.user], ["text", " joined"]);
          break;
        case "leave":
          append("notice", ["user", message.user], ["text", " left"]);
          break;
        case "announcement":
          // broadcast() reaches every websocket, this one too: announcements
          // to everyone have no room, and notifications.js shows them.
          if (message.room) {
            append("announcement", ["user", "Announcement:"], ["text", message.text]);
          }
          break;
        // Notifications come too, as this websocket is one of the user's:
        // notifications.js shows them.
      }
    },
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim() && socket.send(input.value)) {
      input.value = "";
    }
  });
})();
