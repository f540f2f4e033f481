/*
 * django_websocket's JavaScript client: a websocket that reconnects and resumes.
 *
 * One file, no dependencies, no build step; for browsers with ES2017. Load it
 * as a classic script, which defines window.DjangoWebSocket:
 *
 *   <script src="{% static 'django_websocket/websocket.js' %}"></script>
 *
 *   const socket = new DjangoWebSocket("{% websocket_url 'chat:socket' room.name %}");
 *   socket.addEventListener("message", (event) => console.log(event.data, event.group));
 *
 * It reconnects when the connection drops or the server restarts, after a
 * random delay (capped exponential backoff, full jitter); it remembers the
 * position of each group's last message and reports them when it
 * reconnects, so that the server sends what was published meanwhile (the
 * groups that keep history), or tells it that messages were lost. See
 * docs/javascript.rst for the reference, and django_websocket/envelopes.py
 * for the wire protocol.
 */
(function (global) {
  "use strict";

  // Envelopes (django_websocket/envelopes.py): a group message starts with
  // MESSAGE, a notice with NOTICE; the client asks for them with dws=1.
  // A view's own message that starts with one of these three characters
  // comes after ESCAPE, which is dropped.
  const MESSAGE = "\x1e";
  const NOTICE = "\x1d";
  const ESCAPE = "\x1f";
  const MESSAGE_BYTE = 0x1e;
  const ESCAPE_BYTE = 0x1f;
  const NEWLINE_BYTE = 0x0a;
  const MAX_POSITIONS = 100;
  // Positions reported take this many characters of the URL at most, far
  // below the 8 KB that servers and proxies accept in a request line.
  const MAX_POSITIONS_LENGTH = 2000;
  const POSITION = /^([A-Za-z0-9_-]{1,32}):(\d{1,19})$/;
  // The group names the server accepts in dws_positions: the library's own
  // may hold other printable characters, but a comma separates positions.
  const GROUP = /^(?:[A-Za-z0-9_.:-]{1,100}|django_websocket\.[!-+\--~]{1,200})$/;

  // Close codes after which connecting again may work: going away, no
  // status, dropped (a refused handshake too: browsers hide its status),
  // server error, service restart, try again later, bad gateway. Others
  // (1000: the view ended; 1008: policy, e.g. the session ended; protocol
  // errors) would only repeat.
  const RETRY = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

  // A connection that stayed open this long counts as a success: the
  // backoff starts over.
  const STABLE_AFTER = 5000;
  // 2 ** 30 times minDelay is past any sensible maxDelay: cap the exponent.
  const MAX_EXPONENT = 30;

  function parsePosition(value) {
    const match = POSITION.exec(value);
    return match === null ? null : {epoch: match[1], offset: Number(match[2])};
  }

  function defaultShouldReconnect(event) {
    return RETRY.has(event.code);
  }

  class DjangoWebSocket extends EventTarget {
    /*
     * url: ws://, wss://, http(s):// or a path on this site, such as
     * "/ws/chat/lobby/"; the page's scheme chooses ws:// or wss://.
     * options: see docs/javascript.rst.
     */
    constructor(url, options = {}) {
      super();
      const {
        protocols = [],
        minDelay = 500,
        maxDelay = 30000,
        shouldReconnect = defaultShouldReconnect,
        positions = {},
        maxQueue = 100,
      } = options;
      const base = new URL(url, global.location.href);
      if (base.protocol === "http:") base.protocol = "ws:";
      if (base.protocol === "https:") base.protocol = "wss:";
      if (base.protocol !== "ws:" && base.protocol !== "wss:") {
        throw new SyntaxError(`DjangoWebSocket: ${url} is not a websocket URL`);
      }
      this.url = base.href;
      this.protocols = protocols;
      this.minDelay = minDelay;
      this.maxDelay = maxDelay;
      this.shouldReconnect = shouldReconnect;
      this.maxQueue = maxQueue;
      /* "connecting", "open", "reconnecting" or "closed". */
      this.state = "connecting";
      /* While reconnecting: the delay in ms, and when (Date.now()) the next attempt starts. */
      this.reconnectDelay = null;
      this.reconnectAt = null;
      /* Reconnections since the last stable connection: the backoff's exponent. */
      this.attempt = 0;
      /* Once closed: the code and reason of the last close. */
      this.closeCode = this.closeReason = null;
      /* Handlers, as with WebSocket; addEventListener() works too. */
      this.onstatechange = this.onopen = this.onmessage = this.onlost = this.onclose = null;
      // group -> {epoch, offset}; a Map keeps the order of updates, so that
      // the most recently updated groups are reported when there are too many.
      this._positions = new Map();
      for (const [group, value] of Object.entries(positions instanceof Map
        ? Object.fromEntries(positions) : positions)) {
        const position = parsePosition(String(value));
        if (position === null || !GROUP.test(group)) {
          throw new SyntaxError(`DjangoWebSocket: invalid position ${value} for ${group}`);
        }
        this._positions.set(group, position);
      }
      this._queue = [];
      this._socket = null;
      this._timer = null;
      this._openedAt = null;
      this._closing = false;
      this._connect();
    }

    /* The positions known, as {group: "epoch:offset"}: pass them to a later DjangoWebSocket. */
    get positions() {
      const result = {};
      for (const [group, {epoch, offset}] of this._positions) {
        result[group] = `${epoch}:${offset}`;
      }
      return result;
    }

    /* The subprotocol the server chose, once open; "" otherwise. */
    get protocol() {
      return this._socket === null ? "" : this._socket.protocol;
    }

    /* Messages waiting for the connection to open. */
    get queued() {
      return this._queue.length;
    }

    /*
     * Send data (a string, ArrayBuffer, Blob or typed array). Returns true
     * when it is sent, or queued to be sent in order once the connection is
     * open (again); false when the connection is closed for good or the queue
     * holds maxQueue messages already: then nothing is sent.
     */
    send(data) {
      if (this.state === "open" && !this._closing
          && this._socket.readyState === WebSocket.OPEN) {
        this._socket.send(data);
        return true;
      }
      if (this.state === "closed" || this._closing || this._queue.length >= this.maxQueue) {
        return false;
      }
      this._queue.push(data);
      return true;
    }

    /* Close the connection and stop reconnecting; queued messages are dropped. */
    close(code = 1000, reason = "") {
      if (this.state === "closed" || this._closing) return;
      if (this._timer === null) {
        // First: it throws on a code other than 1000 or 3000-4999, and then
        // nothing changed.
        this._socket.close(code, reason);
      }
      this._closing = true;
      this._queue = [];
      if (this._timer !== null) {
        // Reconnecting: no socket to close.
        clearTimeout(this._timer);
        this._timer = null;
        this._finish({code, reason, wasClean: true});
      }
    }

    /*
     * Show the state in element: its data-state attribute is the state; its
     * text is the state, "reconnecting in N s", or the close reason.
     */
    showState(element) {
      let ticker = null;
      const show = () => {
        element.dataset.state = this.state;
        if (this.state === "reconnecting") {
          const seconds = Math.max(1, Math.ceil((this.reconnectAt - Date.now()) / 1000));
          element.textContent = `reconnecting in ${seconds} s`;
        } else if (this.state === "closed") {
          element.textContent = this.closeReason || "closed";
        } else {
          element.textContent = this.state;
        }
      };
      this.addEventListener("statechange", () => {
        clearInterval(ticker);
        if (this.state === "reconnecting") ticker = setInterval(show, 1000);
        show();
      });
      show();
    }

    // Connecting.

    _connect() {
      const url = new URL(this.url);
      url.searchParams.set("dws", "1");
      // The most recently updated groups, if there are too many.
      const positions = [];
      let length = 0;
      for (const [group, {epoch, offset}] of [...this._positions].reverse()) {
        const item = `${group}@${epoch}:${offset}`;
        length += item.length + 1;
        if (positions.length === MAX_POSITIONS || length > MAX_POSITIONS_LENGTH) break;
        positions.unshift(item);
      }
      if (positions.length > 0) {
        url.searchParams.set("dws_positions", positions.join(","));
      } else {
        url.searchParams.delete("dws_positions");
      }
      const socket = new WebSocket(url.href, this.protocols);
      socket.binaryType = "arraybuffer";
      socket.onopen = () => this._opened();
      socket.onmessage = (event) => this._received(event.data);
      socket.onclose = (event) => this._closed(event);
      this._socket = socket;
      this._setState("connecting");
    }

    _opened() {
      this._openedAt = Date.now();
      this.reconnectDelay = this.reconnectAt = null;
      // In order, before anything that listeners send.
      for (const data of this._queue.splice(0)) {
        this._socket.send(data);
      }
      this._setState("open");
      this._dispatch("open", {});
    }

    _closed(event) {
      this._socket = null;
      if (this._openedAt !== null && Date.now() - this._openedAt >= STABLE_AFTER) {
        this.attempt = 0;
      }
      this._openedAt = null;
      const {code, reason, wasClean} = event;
      if (this._closing || !this.shouldReconnect(event)) {
        this._queue = [];
        this._finish({code, reason, wasClean});
        return;
      }
      // Full jitter: after a restart, the pages don't all come back at once.
      const exponent = Math.min(this.attempt, MAX_EXPONENT);
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** exponent);
      this.attempt += 1;
      this.reconnectDelay = Math.floor(Math.random() * ceiling);
      this.reconnectAt = Date.now() + this.reconnectDelay;
      this._timer = setTimeout(() => {
        this._timer = null;
        this._connect();
      }, this.reconnectDelay);
      this._setState("reconnecting");
      this._dispatch("close", {code, reason, wasClean, willReconnect: true});
    }

    _finish({code, reason, wasClean}) {
      this.closeCode = code;
      this.closeReason = reason;
      this.reconnectDelay = this.reconnectAt = null;
      this._setState("closed");
      this._dispatch("close", {code, reason, wasClean, willReconnect: false});
    }

    // Receiving.

    _received(data) {
      if (typeof data === "string") {
        if (data.startsWith(NOTICE)) {
          this._notice(data);
          return;
        }
        if (data.startsWith(MESSAGE)) {
          const end = data.indexOf("\n");
          if (end !== -1) {
            this._groupMessage(data.slice(1, end), data.slice(end + 1));
            return;
          }
        }
        if (data.startsWith(ESCAPE)) {
          data = data.slice(1);
        }
      } else {
        const bytes = new Uint8Array(data);
        if (bytes[0] === ESCAPE_BYTE) {
          data = data.slice(1);
        } else if (bytes[0] === MESSAGE_BYTE) {
          const end = bytes.indexOf(NEWLINE_BYTE);
          if (end !== -1) {
            // The header is ASCII.
            const head = String.fromCharCode(...bytes.subarray(1, end));
            this._groupMessage(head, data.slice(end + 1));
            return;
          }
        }
      }
      // The view's own message.
      this._dispatch("message", {data, group: null, position: null});
    }

    _groupMessage(head, data) {
      const space = head.indexOf(" ");
      if (space === -1) {
        // The group keeps no history: no position.
        this._dispatch("message", {data, group: head, position: null});
        return;
      }
      const group = head.slice(0, space);
      const text = head.slice(space + 1);
      const position = parsePosition(text);
      if (position !== null) {
        const known = this._positions.get(group);
        if (known !== undefined && known.epoch === position.epoch
            && position.offset <= known.offset) {
          // Already delivered: a message published while the server resumed
          // the group can come from history and live.
          return;
        }
        this._remember(group, position);
        if (known !== undefined && known.epoch !== position.epoch) {
          // Positions started over, with no notice: a view that reads the
          // group's messages sends them on (the server's notices would
          // overtake them). What came before is lost.
          this._dispatch("lost", {group, position: `${position.epoch}:${position.offset - 1}`});
        }
      }
      this._dispatch("message", {data, group, position: position === null ? null : text});
    }

    _notice(data) {
      let notice;
      try {
        notice = JSON.parse(data.slice(1));
      } catch (error) {
        console.warn("DjangoWebSocket: invalid notice", data);
        return;
      }
      const position = parsePosition(String(notice.position));
      if (position === null || typeof notice.group !== "string") {
        console.warn("DjangoWebSocket: invalid notice", data);
        return;
      }
      if (notice.type === "subscribed") {
        const known = this._positions.get(notice.group);
        // Keep a later position of the same epoch: messages up to it arrived.
        if (known === undefined || known.epoch !== position.epoch
            || known.offset < position.offset) {
          this._remember(notice.group, position);
        }
      } else if (notice.type === "lost") {
        this._remember(notice.group, position);
        this._dispatch("lost", {group: notice.group, position: notice.position});
      }
      // Other types are for later versions of the server: ignored.
    }

    _remember(group, position) {
      if (!GROUP.test(group)) return;  // the server could not take it back
      // Delete first: the Map's order is the order of updates.
      this._positions.delete(group);
      this._positions.set(group, position);
    }

    // Events.

    _setState(state) {
      if (state === this.state) return;
      const previous = this.state;
      this.state = state;
      this._dispatch("statechange", {state, previous});
    }

    _dispatch(type, fields) {
      const event = new Event(type);
      Object.assign(event, fields);
      this.dispatchEvent(event);
      // socket.onmessage = ... works as with WebSocket.
      const handler = this["on" + type];
      if (typeof handler === "function") handler.call(this, event);
    }
  }

  global.DjangoWebSocket = DjangoWebSocket;
})(typeof window !== "undefined" ? window : globalThis);
