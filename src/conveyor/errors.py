"""Every error conveyor raises on purpose derives from ``ConveyorError``."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigurationError(ConveyorError):
    """A bad store URL, an unknown option, a queue or task defined wrongly."""


class StoreUnavailable(ConveyorError):
    """The store cannot be reached for now (server down, connection lost,
    database locked by another writer): worth retrying, and workers do, with
    back-off. The message names the URL."""


class StoreMisconfigured(ConfigurationError):
    """The store answered, but refuses us for good: a wrong password, a
    database number the server does not have, a file that is not a conveyor
    database, a database file deleted under a running worker. Retrying
    cannot help, so a worker stops (non-zero exit) instead of retrying, and
    the CLI prints one line. The message names the URL."""


class PayloadError(ConveyorError, TypeError):
    """Arguments JSON cannot carry, or a payload over the size limit. Nothing
    was stored."""


class UnknownTask(ConveyorError, LookupError):
    """No task of that name is registered in the app."""


class JobFailed(ConveyorError):
    """``job.result()`` of a job that went dead: carries the last error."""

    def __init__(self, job_id: str, error_type: str, message: str, traceback: str = "") -> None:
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = message
        self.remote_traceback = traceback
        super().__init__(f"job {job_id} is dead: {error_type}: {message}")


class JobCancelled(ConveyorError):
    """``job.result()`` of a job that was cancelled."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")


class JobTimeout(ConveyorError):
    """A run passed its ``timeout``: raised as the run's error."""
