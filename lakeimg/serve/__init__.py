"""`lakeimg serve`: a read-only web catalog of a lake (Starlette app, uvicorn server).

Modules: `catalog` (every read the pages make, user text validated), `zoom` (deep-zoom tiles
from the tiles table or decoded images, rendering, ETags), `graph` (lineage as SVG), `pages`
(HTML), `app` (routes, guards, the server), `static/viewer.js` (the canvas viewer).

This package sits above `Lake` and below the CLI (pyproject.toml's import-linter layers);
`lakeimg.serve.app` needs the optional `serve` extra (starlette, uvicorn), so it is imported
only by `lakeimg serve` itself.
"""
