"""One exception tree for everything the runtime refuses to do.

::

    VivavoceError
    ├── NotFound          the object does not exist, or belongs to another organization
    ├── Conflict          the object exists but is in the wrong state for this request
    │   └── LeaseLost     another server process has taken the run over: this one may no longer act for it
    ├── Gone              the object's data was erased on purpose (an erased run's transcript, events, recording)
    ├── InvalidRequest    the request is malformed (bad cursor, both ids, unknown value)
    │   └── UnsupportedMediaType  the body is of a type that cannot be JSON (415)
    ├── Forbidden         a webhook whose signature does not verify (403)
    ├── UpstreamFailed    a service we call (Twilio's API) failed or refused us (502)
    ├── StorageUnavailable  the database could not be written (disk gone, file unopenable): nothing was stored
    └── Draining          this server process is handing its interviews over to others (503: try another)

The API maps them to 404, 409, 410, 400 (415), 403, 502 and 503 with the same JSON error shape.
"""

from __future__ import annotations


class VivavoceError(Exception):
    status = 500
    type = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, details: list[dict[str, str | None]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details  # every problem found ({param, message}), when there was more than one to say


class NotFound(VivavoceError):
    status = 404
    type = "not_found"


class Conflict(VivavoceError):
    status = 409
    type = "conflict"


class LeaseLost(Conflict):
    """A write for a run was refused because this process no longer holds the run's lease (fencing).

    Nothing of the write was stored. The process stops acting for the run: another one acts for it now
    (runtime/storage/leases.py)."""

    type = "lease_lost"


class Gone(VivavoceError):
    status = 410
    type = "gone"


class InvalidRequest(VivavoceError):
    status = 400
    type = "invalid_request"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    type = "unsupported_media_type"


class Forbidden(VivavoceError):
    """A request that proves nothing of who sent it (a webhook whose signature does not verify)."""

    status = 403
    type = "forbidden"


class UpstreamFailed(VivavoceError):
    """A service we depend on (Twilio's API) failed or refused us; nothing the caller sent was wrong."""

    status = 502
    type = "upstream_failed"


class StorageUnavailable(VivavoceError):
    status = 503
    type = "storage_unavailable"


class Draining(VivavoceError):
    """This process is draining (an upgrade, a scale-down): it takes no new interviews; another process will."""

    status = 503
    type = "draining"
