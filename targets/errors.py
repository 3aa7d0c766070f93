"""Errors every layer raises and the edges translate into Bread's `{"message", "code"}` envelope."""


class BakehouseError(Exception):
    code = "INTERNAL_ERROR"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationFailed(BakehouseError):
    """A name or config value is malformed (HTTP 422). `fields` holds (field path, message) pairs
    when the fault is known field by field."""

    code = "VALIDATION_ERROR"

    def __init__(self, message: str, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.fields = fields or []


class InvalidInput(BakehouseError):
    """Well-formed but not possible now, e.g. rollout before stim is complete (HTTP 400)."""

    code = "INVALID_INPUT"


class NotFound(BakehouseError):
    code = "RESOURCE_NOT_FOUND"


class Conflict(BakehouseError):
    """An immutable resource exists with different content (HTTP 409)."""

    code = "RESOURCE_CONFLICT"
