"""Alembic environment of referral's database: its own tables and the platform's (outbox, inbox, idempotency keys)."""

from alembic import context

from enlace_platform.migrations import run_env
from referral.adapters.orm import TABLES

run_env(context, TABLES)
