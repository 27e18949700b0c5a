"""The registry's read-only HTTP API (FastAPI, served by uvicorn in the daemon or by
`cemsd serve`). Importing this package is cheap: the configuration imports `settings`;
the web framework is imported only by `app` and `server`."""
