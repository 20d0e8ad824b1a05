"""The server: pure rules (core, sequencer, presence, ratelimit, dedupe), the store, and the PULL+PUB loop."""
