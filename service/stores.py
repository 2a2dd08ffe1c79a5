"""Where the front doors are wired: the job store a process uses, chosen from settings.

The library (``pipeline/``) defines the records and the file store and never imports this layer;
the CLI, the HTTP API and the workers call ``open_job_store`` to get the configured one.
"""

from __future__ import annotations

from pipeline.jobs import FileJobStore, JobStore
from pipeline.storage import open_storage


def open_job_store(settings) -> JobStore:
    """JSON files beside the job's files (one host), or rows in the database (any number of hosts)."""
    storage = open_storage(settings)
    if settings.jobs.store == "database":
        from service.db import SqlJobStore

        return SqlJobStore(storage, settings)
    return FileJobStore(storage)
