"""Exceptions that map to the BIDS-App exit codes.

:class:`InputError` is raised for anything the user can fix (a bad dataset,
a bad option): the command line prints its one-line message and exits 2.
Any other exception is a run failure and exits 1.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input or options (exit code 2).

    The message must be one line that names the offending file or option and
    says how to fix it.
    """


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
