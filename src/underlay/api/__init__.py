"""The REST face: FastAPI under ``/api/v1``. Routes parse, authorize, call a service, render."""
