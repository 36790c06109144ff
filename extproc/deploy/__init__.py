"""Deployment: Envoy configuration for a plugin set, and the one-command local demo."""
