"""The operations CLI (enlace-ops)."""
