"""Stubs for the native module; import ``holysheep`` rather than this."""

__version__: str
