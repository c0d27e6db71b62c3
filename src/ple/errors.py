class PLEError(Exception):
    """A problem the user can fix (bad config, missing file, bad data). The CLI prints it on one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
