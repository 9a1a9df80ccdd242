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


def printable(text):
    """`text` with every character a terminal would act on (line breaks, escape sequences,
    bidirectional controls) or could not encode (a lone surrogate from a non-UTF-8 file name)
    written as an escape: a user-derived name prints as one inert line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c):
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte: show the byte
        return f"\\x{n - 0xDC00:02x}"
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
        f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
    )
