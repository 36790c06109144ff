"""End-to-end tests: real Envoy -> ext_proc server -> echo upstream."""
