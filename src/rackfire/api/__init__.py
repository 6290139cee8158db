"""The REST API (FastAPI) and its typed client."""
