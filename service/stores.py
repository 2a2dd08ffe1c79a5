"""Where the front doors are wired: the job store a process uses, chosen from settings.

The library (``pipeline/``) defines the records and the file store and never imports this layer;
the CLI, the HTTP API and the workers call ``open_job_store`` to get the configured one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jobs import FileJobStore, JobStore
from pipeline.storage import open_storage


def open_job_store(settings) -> JobStore:
    """JSON files beside the job's files (one host), or rows in the database (any number of hosts)."""
    storage = open_storage(settings)
    if settings.jobs.store == "database":
        from service.db import SqlJobStore

        return SqlJobStore(storage, settings)
    return FileJobStore(storage)


def manifest_keeper(settings):
    """The manifest repository's ``add`` (in the job database: the SQLite file in the data dir
    unless ``jobs.database_url`` names another), or None when ``label.keep_manifests`` is off."""
    if not settings.label.keep_manifests:
        return None
    from service.manifests import open_manifest_repository

    return open_manifest_repository(settings).add


def existing_manifest_repository(settings):
    """The manifest repository to read from, or None when this host has none: a configured
    database, or the data dir's SQLite file if one was made (checking a file creates nothing)."""
    from service import db

    url = db.database_url(settings)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None
    from service.manifests import open_manifest_repository

    return open_manifest_repository(settings)
