"""Alembic environment of notification's database: its own tables and the platform's (outbox, inbox, idempotency keys)."""

from alembic import context

from enlace_platform.migrations import run_env
from notification.adapters.orm import TABLES

run_env(context, TABLES)
