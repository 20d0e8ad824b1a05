"""The full-screen terminal client (Textual): ``zmqchat-client --ui full``, the default on a terminal.

``state`` holds every decision (pure, tested without a terminal); ``render`` turns rows into styled text;
``widgets`` and ``app`` draw them and take the keys; ``link`` is what the app needs of an ``AsyncClient``.
"""

from __future__ import annotations

__all__ = ["ChatApp", "run"]


def __getattr__(name: str):
    # Textual is imported only when the full-screen client is used: the pure state needs none of it.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
