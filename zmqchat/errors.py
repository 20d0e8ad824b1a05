"""One root for every error a user should see as a one-line message (the CLI prints ``ERROR: text``)."""


class ZmqchatError(Exception):
    """A known problem; its text is the message the user sees."""


class ConnectError(ZmqchatError):
    """The client could not join the chat: no server, a refused key, a taken name."""
