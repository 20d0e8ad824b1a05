"""Command-line entry points. Each ``main(argv=None) -> int`` parses, then calls the library."""
