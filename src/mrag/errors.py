"""The library's own error, raised from every floor (rows, store, index, spaces)."""


class StoreError(ValueError):
    """The store cannot do what was asked (wrong model, missing index, ...)."""
