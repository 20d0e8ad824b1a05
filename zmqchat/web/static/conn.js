// The page's link to the gateway: one WebSocket, reopened with backoff whenever it drops, and the
// ``resume`` that every connection starts with (the last seq the page has of each room, and the epoch).
//
// Lines typed while there is no connection (or before the gateway says ``synced``) wait in the page's own
// outbox with their ids; they are sent when the connection is ready, and sent again (same id) after any
// reconnect until the gateway answers them: the gateway never sends one id twice.

const RETRY_FIRST = 500; // ms before the first reconnect
const RETRY_MAX = 5000; // ms between reconnects at most
const PING_EVERY = 25000; // ms: keeps proxies from closing an idle connection

export const CLOSE = {
  goingAway: 1001, policy: 1008, tooBig: 1009, tooSlow: 4001, noResume: 4002, loggedOut: 4401, refused: 4403,
};

export class Connection {
  // ``resume()`` gives the resume message's fields; ``onEvent(event)`` gets every event; ``onState(state,
  // detail)`` hears "connecting", "open", "synced", "down" (will retry) and "ended" (close code in detail).
  constructor({ resume, onEvent, onState }) {
    this.resume = resume;
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.synced = false;
    this.serial = 0; // which connection this is: lines remember the one they went out on
    this.retry = RETRY_FIRST;
    this.stopped = true;
    this.timer = null;
    this.pinger = null;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }

  get ready() {
    return this.synced && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  open() {
    clearTimeout(this.timer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    this.ws = ws;
    this.synced = false;
    this.serial += 1;
    this.onState("connecting");
    ws.addEventListener("open", () => {
      if (ws !== this.ws) return;
      ws.send(JSON.stringify({ kind: "resume", ...this.resume() }));
      this.onState("open");
      this.pinger = setInterval(() => this.send({ kind: "ping" }), PING_EVERY);
    });
    ws.addEventListener("message", (message) => {
      if (ws !== this.ws) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // the gateway sends JSON only; anything else is ignored
      }
      if (event.type === "synced") {
        this.synced = true;
        this.retry = RETRY_FIRST;
      }
      this.onEvent(event);
      if (event.type === "synced") this.onState("synced");
    });
    ws.addEventListener("close", (close) => {
      if (ws !== this.ws) return;
      clearInterval(this.pinger);
      this.ws = null;
      this.synced = false;
      const final = [CLOSE.loggedOut, CLOSE.refused, CLOSE.policy].includes(close.code);
      if (this.stopped) return;
      if (final) {
        this.stopped = true;
        this.onState("ended", { code: close.code, reason: close.reason });
        return;
      }
      this.onState("down", { code: close.code, reason: close.reason });
      this.timer = setTimeout(() => this.open(), this.retry);
      this.retry = Math.min(RETRY_MAX, this.retry * 2);
    });
  }

  // Reconnect now (the page came back from sleep, the network returned).
  nudge() {
    if (!this.stopped && this.ws === null) {
      this.retry = RETRY_FIRST;
      this.open();
    }
  }

  send(command) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(command));
    return true;
  }
}
