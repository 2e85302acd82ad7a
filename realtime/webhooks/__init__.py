"""Webhooks: signed HTTP deliveries of session events to other systems, from the durable log."""
