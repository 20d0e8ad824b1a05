"""``History`` for the tests of sequencing and storage: a Sequencer over a store, each ``commit()`` durable
before it returns, as the server's core drives them (submit, then settle) but without the core."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from zmqchat.server.sequencer import Sequencer
from zmqchat.server.store import MemoryStore, SqliteStore, StoreError


class History:
    """``path`` None: a MemoryStore. Everything the Sequencer and the store offer, plus ``commit()`` and
    ``close()``."""

    def __init__(self, limit: int, path: str | Path | None = None, clock: Callable[[], float] = time.monotonic,
                 repair: bool = False) -> None:
        self.store = MemoryStore(limit) if path is None else SqliteStore(path, limit, clock=clock, repair=repair)
        self.sequencer = Sequencer(self.store, limit)

    def __getattr__(self, name: str):  # the sequencer's methods, and the store's (path, epoch, ...)
        try:
            return getattr(self.sequencer, name)
        except AttributeError:
            return getattr(self.store, name)

    def commit(self) -> None:
        """Submit the open batch and settle it; StoreError if the store refused it (the batch stays open)."""
        self.sequencer.submit()
        assert self.sequencer.settle() == self.sequencer.waiting_for()

    def close(self) -> None:
        """What the server does on the way out: one last submit (a refusal is only logged by the core), close."""
        with contextlib.suppress(StoreError):
            self.commit()
        self.store.close()


def shut(core) -> None:
    """Close a core's store the way the server's loop does on the way out (after one last submit)."""
    with contextlib.suppress(StoreError):
        core.sequencer.submit()
    core.sequencer.store.close()
