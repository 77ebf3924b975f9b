"""The exception for user-facing mistakes; the CLI prints its message, not a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input file, missing weights, ...); the message says how."""

    # True for errors that every process of a data-parallel training raises alike, at the same
    # step (they follow from what the processes agree on): only the first one prints it.
    every_process = False


class DataError(PipelineError):
    """A dataset that cannot be read or made (a bad download, an unreadable image, a damaged
    dataset file)."""


class ArtefactError(PipelineError):
    """A file that is missing, damaged, or made for another run than the one reading it."""
