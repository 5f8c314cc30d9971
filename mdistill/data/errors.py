"""The data's one error type."""


class DataError(ValueError):
    """The data cannot feed the run: unreadable files, too many bad records, or not the data
    of a checkpoint. A ValueError, as the evaluators report those in one line."""
