"""The one error type users see: a single line naming the file and the fix."""


class CaptionerError(Exception):
    """A problem with the user's files or arguments, not a bug.

    The CLI prints str(error) on one line and exits with `exit_code`;
    library callers catch it like any exception.
    """

    exit_code = 2

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
