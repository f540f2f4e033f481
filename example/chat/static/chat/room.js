"use strict";

// A chat room's page: shows what the room's websocket sends, and sends what
// the user types. Messages are JSON; see chat/views.py.
(() => {
  const {user: me, positions} = JSON.parse(document.getElementById("chat").textContent);
  const log = document.getElementById("log");
  const members = document.getElementById("members");
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

  function showMembers(names) {
    members.replaceChildren(...[...names].sort().map((name) => {
      const item = document.createElement("li");
      item.textContent = name;
      return item;
    }));
  }

  let present = new Set(Array.from(members.children, (item) => item.textContent));
  log.lastElementChild?.scrollIntoView({block: "nearest"});

  // The page rendered the room's messages up to `positions`: the client
  // resumes from there, then from the last message it got, each time it
  // reconnects. See django_websocket/websocket.js.
  const socket = new DjangoWebSocket(log.dataset.socket, {positions});
  socket.showState(document.getElementById("room-state"));

  // The server's history no longer holds some messages this page missed:
  // render it again, with the room's last messages.
  socket.addEventListener("lost", () => location.reload());

  socket.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      console.warn("Not JSON, ignored:", event.data);
      return;
    }
    switch (message.type) {
      case "message":
        append(message.user === me ? "message mine" : "message",
               ["user", message.user], ["text", message.text]);
        break;
      case "members":
        // Who is here as this websocket (re)connects.
        present = new Set(message.members);
        showMembers(present);
        break;
      case "presence":
        // A user's first websocket in the room, or their last one, with
        // the name that the view set as its presence_info.
        if (message.event === "join") {
          present.add(message.info);
          append("notice", ["user", message.info], ["text", " joined"]);
        } else if (message.event === "leave") {
          present.delete(message.info);
          append("notice", ["user", message.info], ["text", " left"]);
        }
        showMembers(present);
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
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Sent, or queued until the websocket is open again.
    if (input.value.trim() && socket.send(input.value)) {
      input.value = "";
    }
  });
})();
