"""conveyor: background jobs for Python.

>>> from conveyor import Conveyor
>>> app = Conveyor("memory://")
>>> @app.task
... def add(x, y):
...     return x + y
>>> job = add.enqueue(2, 3)
"""

from conveyor.app import Conveyor
from conveyor.backoff import Backoff
from conveyor.clock import FakeClock, SystemClock
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    PayloadError,
    StoreMisconfigured,
    StoreUnavailable,
    UnknownTask,
)
from conveyor.job import Job
from conveyor.task import Task

__all__ = [
    "Backoff",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "FakeClock",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobTimeout",
    "PayloadError",
    "StoreMisconfigured",
    "StoreUnavailable",
    "SystemClock",
    "Task",
    "UnknownTask",
]

__version__ = "0.1.0"
