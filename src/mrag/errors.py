"""The library's own error, raised from every floor (rows, store, index, spaces)."""


class StoreError(ValueError):
    """The store cannot do what was asked (wrong model, missing index, ...)."""


class Busy(StoreError):
    """Other writers committed every time a read looked: the same request goes through a moment later."""
