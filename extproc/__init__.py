"""extism-extproc: an Envoy ext_proc server that runs Extism WebAssembly plugins."""

__version__ = "0.1.0"
