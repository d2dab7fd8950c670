"""The errors every stage raises and catches; importable without pyarrow or torch."""


class DataError(ValueError):
    """A problem with the user's data or data config; the message names the input and the fix."""


def check_count(name: str, value: object, least: int = 1) -> None:
    """A DataError naming the setting `name` unless `value` is an integer (not a bool) >= `least`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DataError(f"{name} must be an integer of at least {least}, got {value!r}")
