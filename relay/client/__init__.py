"""The application side: what `relay tunnel`, `relay ssh` and `relay exec` run.

- `session.py`: sans-I/O rules of the source end (what to send, what each incoming
  message means), and the framing of `relay exec` (markers around one command's output).
- `api.py`: a small client of the REST API (aiohttp's client, never aiohttp.web).
- `output.py`: tables for people and JSON for scripts.
- `terminal.py`: raw mode, stdin, the window size.
- `remote.py`: the WebSocket to the source-connect address, driving a session.
"""
