"""The one error type that means "the caller asked for something we cannot do".

Validators anywhere in the package raise :class:`InputError` (a ``ValueError``, so plain Python
callers can keep catching that). Only this type becomes an HTTP 4xx or CLI exit status 2 with a
single line; any other exception is a bug: a 500 with a logged traceback, or CLI exit 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: the message says what was wrong and how to fix it.

    ``code`` names the rule that failed (``invalid_value``, ``empty_input``, ``too_many_tokens`` …): the
    server answers it as the error's ``code`` (and ``too_many_*`` as 413), the CLI and Python API show the message.
    """

    def __init__(self, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.code = code
