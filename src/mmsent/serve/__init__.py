"""The prediction service (FastAPI) and its web page."""
