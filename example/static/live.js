"use strict";

/*
 * liveSocket(path, {onmessage, onend, stateElement}): a websocket to `path`
 * on this site that stays open.
 *
 * When the connection drops (the server restarts, a deployment, the network)
 * it connects again after a delay that doubles at each failed attempt, from
 * MIN_DELAY up to MAX_DELAY, with jitter: after a restart, the pages that
 * were connected don't all come back at the same instant.
 *
 * A close with 1008 (policy violation) is final: the session ended, or the
 * client broke a rule, and connecting again would only repeat it. Then
 * `onend` gets the close event (its reason says why), and no reconnection
 * follows. Other closes (1012 for a server restart, 1013 for a client that
 * fell behind, a dropped connection) are retried.
 *
 * `onmessage` gets each message, decoded from JSON. `stateElement` shows the
 * state, as its text and its data-state attribute: "connecting",
 * "connected", "reconnecting" (text: "reconnecting in 3 s") or "ended".
 *
 * Returns an object whose send(text) sends a text message and returns true,
 * or returns false when the connection is not open.
 */
function liveSocket(path, {onmessage, onend, stateElement}) {
  const MIN_DELAY = 500;  // milliseconds
  const MAX_DELAY = 30000;
  let socket = null;
  let failures = 0;  // attempts that failed in a row

  function show(state, text) {
    if (stateElement) {
      stateElement.dataset.state = state;
      stateElement.textContent = text;
    }
  }

  function connect() {
    show("connecting", "connecting");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + path);
    socket.onopen = () => {
      failures = 0;
      show("connected", "connected");
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        console.warn("Not JSON, ignored:", event.data);
        return;
      }
      onmessage(message);
    };
    // A refused handshake (a 403, a redirect to the login page) closes too:
    // browsers don't tell scripts the status, so it is retried alike.
    socket.onclose = (event) => {
      socket = null;
      if (event.code === 1008) {
        show("ended", event.reason || "closed by the server");
        if (onend) {
          onend(event);
        }
        return;
      }
      reconnectLater();
    };
  }

  function reconnectLater() {
    const ceiling = Math.min(MAX_DELAY, MIN_DELAY * 2 ** failures);
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    failures += 1;
    const due = Date.now() + delay;
    const countdown = () => {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      show("reconnecting", `reconnecting in ${seconds} s`);
    };
    countdown();
    const timer = setInterval(countdown, 1000);
    setTimeout(() => {
      clearInterval(timer);
      connect();
    }, delay);
  }

  connect();
  return {
    send(text) {
      if (socket === null || socket.readyState !== WebSocket.OPEN) {
        return false;
      }
      socket.send(text);
      return true;
    },
  };
}
