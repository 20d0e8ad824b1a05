"""The client: pure rules (session, commands, display) and the loops that drive them (sync, aio)."""
