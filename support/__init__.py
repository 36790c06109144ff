"""What the test suite and the bench share to run the project for real: processes on loopback ports,
Envoy and its bootstrap, the test plugins, and clients that hold server resources.

Not part of the shipped package (the wheel holds `extproc` only). It lives beside `tests` and `bench` rather
than in either, so that neither imports the other: the bench is a tool of its own, and the tests do not
depend on it. Everything here is imported with the repository root on the path (pytest's `pythonpath`,
`python -m bench.run` from the root).
"""
