"""The metadata store: SQLAlchemy 2 models, sessions with tenant scope, Alembic migrations.

SQLite (the embedded default) and PostgreSQL are both first-class; the contract tests run
against both.
"""

from underlay.store.db import Database, Scope
from underlay.store.models import Base

__all__ = ["Base", "Database", "Scope"]
