"""What the two ends of a tunnel share, the device agent (relay/agent/) and the application
side (relay/client/), for both protocols. From the bottom up:

- rules, sans-I/O (standard library and the message shapes only): `huawei_tcp` (the `tcp`
  service of Huawei tunnels: messages and credit), `aws_streams` (AWS streams and connections
  of each mode), `localproxy_args` (AWS localproxy's service mappings);
- `pipes`: TCP connections joined to the tunnel, asyncio, both protocols, and the socket
  plumbing they share; `listeners`: the application side's local listeners;
- `websocket`: the one WebSocket client (the only module here that imports aiohttp, an
  adapter with a bytes/messages interface); `reconnect`: the one reconnect loop of every end;
  `aws_session`: an AWS end's reconnecting session.

What follows a close, and attempt after attempt (`Reconnect`), is relay/closes.py's policy,
one for every end.
"""
