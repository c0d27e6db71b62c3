class PLEError(Exception):
    """A problem the user can fix (bad config, missing file, bad data). The CLI prints it on one line."""
