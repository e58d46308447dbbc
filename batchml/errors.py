"""The one exception type users see: its message names the bad input and the fix."""


class BatchmlError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback."""
