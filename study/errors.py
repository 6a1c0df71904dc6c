"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A problem with the user's input: the CLI prints the message and exits with status 2.

    The message names the file, the key, what was wrong and how to fix it; no traceback is shown.
    """
