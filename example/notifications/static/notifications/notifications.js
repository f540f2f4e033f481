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

  // DjangoWebSocket (django_websocket/websocket.js) reconnects by itself.
  const socket = new DjangoWebSocket(list.dataset.socket);
  socket.showState(document.getElementById("live-state"));
  socket.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      console.warn("Not JSON, ignored:", event.data);
      return;
    }
    if (message.type === "notification" || message.type === "announcement") {
      show(message.type, message.text);
    }
  });
  socket.addEventListener("close", (event) => {
    // 1008: the session ended (a logout in another tab), and the client
    // doesn't reconnect. Show the page as it is now.
    if (!event.willReconnect && event.code === 1008) {
      location.reload();
    }
  });
})();
