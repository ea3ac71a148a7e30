"""The one exception family charlm raises for problems a user can fix.

Every message names the problem and, where there is one, the fix. The CLI turns a
CharlmError into a single line on stderr and a non-zero exit; library callers can
catch it like any other exception.
"""


class CharlmError(Exception):
    """A user-facing error: bad input, bad option, missing or damaged file."""
