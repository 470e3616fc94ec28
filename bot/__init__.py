"""Signaling: the Microsoft Graph calls API, the notification webhook, call state, the CLI."""
