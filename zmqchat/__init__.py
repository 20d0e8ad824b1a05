"""zmqchat: chat and broadcast on ZeroMQ. Bots use ``Client`` (see docs/bots.md)."""

__version__ = "0.1.0"

from .client import Client
from .errors import ConnectError, ZmqchatError

__all__ = ["Client", "ConnectError", "ZmqchatError", "__version__"]
