// What the page knows, kept in sessionStorage so that a reload (or a crash of the tab) resumes: the epoch,
// each room's last seq held without a hole, the current room, and the lines not yet answered.

const KEY = "zmqchat.state";

export class Room {
  constructor(name) {
    this.name = name;
    this.seqs = []; // ascending seqs of the messages shown
    this.rows = new Map(); // seq -> row element
    this.contig = null; // the last seq held with none missing before it (since we started holding), or null
    this.topic = null; // {text, by, ts}
    this.members = new Set();
    this.unread = 0;
    this.mentions = 0;
    this.loading = 0; // the ``before`` of an outstanding page request, 0 if none
    this.start = false; // the oldest message is shown
    this.log = null; // the room's element
  }

  get oldest() {
    return this.seqs.length ? this.seqs[0] : 0;
  }

  get newest() {
    return this.seqs.length ? this.seqs[this.seqs.length - 1] : 0;
  }

  // Note that ``seq`` arrived; ``live``: in stream order (the gateway delivers a room's messages without
  // holes once ``synced``), so the mark may jump over numbers that history no longer holds.
  saw(seq, live) {
    if (this.contig === null || seq === this.contig + 1 || (live && seq > this.contig)) {
      this.contig = Math.max(this.contig ?? 0, seq);
      while (this.rows.has(this.contig + 1)) this.contig += 1;
    }
  }

  forget() {
    this.seqs = [];
    this.rows.clear();
    this.contig = null;
    this.start = false;
    this.loading = 0;
  }
}

export class Store {
  constructor() {
    this.epoch = "";
    this.term = 0; // the newest server term the gateway told us (a pair's takeover count)
    this.current = "";
    this.rooms = new Map(); // name -> Room, in the order joined
    this.pending = []; // {id, room, text, mid, state: "sending" | "failed", reason, serial}
    this.counter = 0;
    this.tabId = Math.random().toString(36).slice(2, 10);
    this.load();
  }

  room(name) {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name);
      this.rooms.set(name, room);
    }
    return room;
  }

  newId() {
    this.counter += 1;
    return `p${this.tabId}.${this.counter}`;
  }

  resume() {
    const rooms = {};
    for (const [name, room] of this.rooms) if (room.contig !== null) rooms[name] = room.contig;
    return { rooms, epoch: this.epoch, term: this.term, room: this.current };
  }

  save() {
    const state = { ...this.resume(), known: [...this.rooms.keys()], counter: this.counter, tabId: this.tabId,
                    pending: this.pending.map(({ id, room, text, mid, state, reason }) =>
                      ({ id, room, text, mid, state, reason })) };
    try {
      sessionStorage.setItem(KEY, JSON.stringify(state));
    } catch {
      // storage full or disabled: the page still works, a reload starts afresh
    }
  }

  load() {
    let state;
    try {
      state = JSON.parse(sessionStorage.getItem(KEY) || "null");
    } catch {
      state = null;
    }
    if (!state || typeof state !== "object") return;
    this.epoch = typeof state.epoch === "string" ? state.epoch : "";
    this.term = Number.isInteger(state.term) && state.term >= 0 ? state.term : 0;
    this.current = typeof state.room === "string" ? state.room : "";
    this.counter = Number.isInteger(state.counter) ? state.counter : 0;
    if (typeof state.tabId === "string") this.tabId = state.tabId;
    for (const name of Array.isArray(state.known) ? state.known : []) {
      if (typeof name === "string") this.room(name);
    }
    for (const [name, seq] of Object.entries(state.rooms || {})) {
      if (Number.isInteger(seq)) this.room(name).contig = seq;
    }
    this.pending = (Array.isArray(state.pending) ? state.pending : [])
      .filter((p) => p && typeof p.id === "string" && typeof p.text === "string")
      .map((p) => ({ ...p, serial: 0 }));
  }

  clear() {
    this.epoch = "";
    this.term = 0;
    this.current = "";
    this.rooms.clear();
    this.pending = [];
    try {
      sessionStorage.removeItem(KEY);
    } catch {
      // nothing to clear
    }
  }
}

// Whether a typed line is a chat message (shown at once as "sending") rather than a command.
export function isMessage(line) {
  return !line.startsWith("/") || line.startsWith("//") || line.startsWith("/me ");
}

// A typed message as it will read: "/me waves" is an action, "//x" sends "/x".
export function typed(line) {
  if (line.startsWith("/me ")) return { text: line.slice(4), action: true };
  return { text: line.startsWith("//") ? line.slice(1) : line, action: false };
}
