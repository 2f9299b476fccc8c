"""Plumbing shared by the Enlace services: envelope, outbox, consumer runner, telemetry, auth.

Domain code never lives here; each service owns its own model and data.
"""
