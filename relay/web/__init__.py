"""The aiohttp adapter: REST API, WebSocket endpoints, OpenAPI document. The only package that imports aiohttp.web."""
