"""Plugin manager: compile Wasm plugins, pool their instances, call them within limits."""
