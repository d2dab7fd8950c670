"""The errors every stage raises and catches; importable without pyarrow or torch."""


class DataError(ValueError):
    """A problem with the user's data or data config; the message names the input and the fix."""
