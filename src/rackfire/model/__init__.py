"""Domain types: frozen dataclasses, no I/O. Everything else speaks these."""
