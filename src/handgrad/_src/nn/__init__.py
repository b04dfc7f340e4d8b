"""Pure-function layers over explicit parameter pytrees; public API in ``handgrad.nn``."""
