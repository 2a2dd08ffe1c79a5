"""The HTTP service for social-app backends: API keys, job rows, share links, reports, webhooks.

``service.db`` holds the database layer (SQLAlchemy models, Alembic migrations, the SQL job store);
the pipeline itself never needs this package unless ``jobs.store`` is ``database``.
"""
