"""CLI tests run `hiertrain` in-process and read its stderr with capsys.

Lightning adds a StreamHandler to its loggers when first imported, bound to whatever
`sys.stderr` is then. Imported inside a test, that is the test's capture, closed when the test
ends, and every later Lightning log line prints a "--- Logging error --- Traceback" instead
(a file run alone then fails assertions on stderr). Importing it here binds the handler to
pytest's session-wide stream, as in a full run."""

import lightning.pytorch  # noqa: F401
