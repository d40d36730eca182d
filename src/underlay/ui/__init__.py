"""The web dashboard: server-rendered pages over the same services the API calls."""
