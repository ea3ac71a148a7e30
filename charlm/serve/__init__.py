"""charlm's HTTP server: settings, request reading, the batching worker, the app (Starlette)."""
