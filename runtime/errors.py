"""One exception tree for everything the runtime refuses to do.

::

    VivavoceError
    ├── NotFound          the object does not exist, or belongs to another organization
    ├── Conflict          the object exists but is in the wrong state for this request
    ├── InvalidRequest    the request is malformed (bad cursor, both ids, unknown value)
    └── StorageUnavailable  the database could not be written (disk gone, file unopenable): nothing was stored

The API maps them to 404, 409, 400 and 503 with the same JSON error shape.
"""

from __future__ import annotations


class VivavoceError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(VivavoceError):
    status = 404
    type = "not_found"


class Conflict(VivavoceError):
    status = 409
    type = "conflict"


class InvalidRequest(VivavoceError):
    status = 400
    type = "invalid_request"


class StorageUnavailable(VivavoceError):
    status = 503
    type = "storage_unavailable"
