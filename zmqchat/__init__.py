"""zmqchat: chat and broadcast on ZeroMQ. Bots use ``Bot`` or ``Client`` (see docs/bots.md)."""

__version__ = "0.1.0"

from .bot import Bot
from .client.sync import Client
from .errors import ConnectError, ZmqchatError

__all__ = ["Bot", "Client", "ConnectError", "ZmqchatError", "__version__"]
