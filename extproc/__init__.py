"""extism-extproc: an Envoy ext_proc server that runs Extism WebAssembly plugins.

What is API, and kept compatible across minor versions: the `extproc` command line, the config file
format (docs/configuration.md), the plugin contract (docs/plugin-abi.md, proto/), the metrics and admin
endpoint (docs/operations.md), and the Python modules `extproc.testing` (test a plugin without Envoy) and
`extproc.config` (load and validate a config), each through the names in its `__all__`. Everything else
in the package is how the server works inside and may change in any release.
"""

__version__ = "0.1.0"
