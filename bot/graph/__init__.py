"""The Microsoft Graph calls API client."""
