"""Plugin manager: compile Wasm plugins, pool their instances, call them within limits."""

import os

# With RUST_BACKTRACE=1 in the environment (common on developer machines and CI), the Extism
# runtime captures a Rust backtrace on every call: about 12 us of CPU each. Panics still print
# theirs; only library-captured backtraces are turned off, and an explicit setting wins.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
