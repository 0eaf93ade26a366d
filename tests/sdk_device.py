"""A device that acts on the wire as Huawei's C device SDK does (huaweicloud-iot-device-sdk-c,
src/tunnel/wss_client.c and ssh_client.c; the facts are in docs/device.md), for tests of what
the relay and our application side do with it:

- it learns its tunnels from the MQTT notify (a plain `mosquitto_sub`: Huawei's platform
  subscribes the real SDK server-side), and connects to `tunnel_uri` with the header
  `tunnel_access_token:TOKEN`;
- `connect`: answers at once `connect_response` with no `data`, then logs in to a real sshd
  (asyncssh, as the SDK uses libssh) and opens a shell on a PTY; a failed login is a
  `disconnect` {"400", "WssClientListenerOnMsg: Create SSH channel failed"} with the
  connect's request_id. Messages are handled one after the other, as the SDK's listener does:
  a `command` sent behind a `connect` waits for the login;
- `command`: written to the shell; every read of up to 2048 bytes of terminal output goes out
  as one `command_response` with the latest request_id, escaped as cJSON does (a control
  character takes 6 bytes) and pretty-printed by `cJSON_Print`: no size limit of its own;
- the shell ending: `disconnect` {"408", "SSH idles for too long..."} with the request_id
  `SSH_timeout_disconnect`; a `disconnect` from the source is ignored, as the SDK does.

Like the SDK, it sends its reads' bytes as they are: a UTF-8 character cut by a read is
invalid UTF-8 on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from typing import Any

import aiohttp
import asyncssh
import orjson

READ_SIZE = 2048   # TUNNEL_SSH_RSPBUFF_LEN
LOGIN_FAILED = "WssClientListenerOnMsg: Create SSH channel failed"
CHANNEL_CLOSED_ID = "SSH_timeout_disconnect"
_SHORT = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def cjson_string(raw: bytes) -> str:
    """`raw` as cJSON's print_string_ptr writes it: controls as \\u00xx, bytes >= 0x80 as they are
    (invalid UTF-8 kept as surrogate escapes, which `_send` turns back into the bytes)."""
    out = []
    for b in raw:
        if b in _SHORT:
            out.append(_SHORT[b])
        elif b < 0x20:
            out.append(f"\\u{b:04x}")
        else:
            out.append(chr(b))
    return "".join(out).encode("latin-1").decode("utf-8", "surrogateescape")


def cjson_print(fields: list[tuple[str, str | dict[str, str]]]) -> str:
    """An object as cJSON_Print formats it (tabs and newlines); values are strings or a flat object."""
    def value(v: str | dict[str, str], depth: int) -> str:
        if isinstance(v, str):
            return '"' + v + '"'
        pad = "\t" * (depth + 1)
        inner = ",\n".join(f'{pad}"{k}":\t"{x}"' for k, x in v.items())
        return "{\n" + inner + "\n" + "\t" * depth + "}"
    body = ",\n".join(f'\t"{k}":\t{value(v, 1)}' for k, v in fields)
    return "{\n" + body + "\n}"


class SdkDevice:
    def __init__(self, ssh_port: int, *, ssh_host: str = "127.0.0.1") -> None:
        self.ssh_host, self.ssh_port = ssh_host, ssh_port
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_codes: list[int | None] = []
        self.sent: list[str] = []          # every text message sent, as sent
        self.connected = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._conn: asyncssh.SSHClientConnection | None = None
        self._shell: asyncssh.SSHClientProcess | None = None
        self._request_id = ""
        self._mqtt: asyncio.subprocess.Process | None = None

    # -- the notify ------------------------------------------------------------------------

    async def follow_notifies(self, mqtt_port: int, device_id: str) -> None:
        """Subscribe to the device's down topic and connect to each tunnel it is told of."""
        self._mqtt = await asyncio.create_subprocess_exec(
            shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", str(mqtt_port),
            "-q", "1", "-t", f"$oc/devices/{device_id}/sys/events/down", "-F", "%p",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self._tasks.append(asyncio.create_task(self._notifies()))
        await asyncio.sleep(0.3)   # let it subscribe before a tunnel is made

    async def _notifies(self) -> None:
        assert self._mqtt is not None and self._mqtt.stdout is not None
        while line := await self._mqtt.stdout.readline():
            for service in orjson.loads(line).get("services", []):
                if service.get("event_type") == "tunnel_notify":
                    paras = service["paras"]
                    await self.connect(paras["tunnel_uri"], paras["tunnel_access_token"])

    # -- the tunnel ------------------------------------------------------------------------

    async def connect(self, uri: str, token: str) -> None:
        await self._drop_ws()
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(uri, headers={"tunnel_access_token": token}, autoping=True,
                                              max_msg_size=0)
        self.connected.set()
        self._tasks.append(asyncio.create_task(self._serve(self.ws)))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = orjson.loads(msg.data)
            op, rid = doc.get("operation_type"), doc.get("request_id", "")
            if op == "connect":
                await self._send([("operation_type", "connect_response"), ("tunnel_service_type", "ssh"),
                                  ("request_id", rid)])
                self._request_id = rid
                if not await self._login(doc.get("data") or {}):
                    await self._disconnect(rid, "400", LOGIN_FAILED)
            elif op == "command" and self._shell is not None and isinstance(doc.get("data"), str):
                self._request_id = rid
                self._shell.stdin.write(doc["data"].encode())
        self.close_codes.append(ws.close_code)
        await self._end_shell()

    async def _login(self, data: dict[str, Any]) -> bool:
        await self._end_shell()   # one session: a new connect replaces it
        try:
            self._conn = await asyncio.wait_for(asyncssh.connect(
                self.ssh_host, self.ssh_port, username=data.get("username"), password=data.get("password"),
                known_hosts=None, client_keys=None, agent_path=None, preferred_auth=("password",)), 15)
            self._shell = await self._conn.create_process(term_type="xterm", term_size=(128, 30), encoding=None)
        except (TimeoutError, OSError, asyncssh.Error):
            await self._end_shell()
            return False
        self._tasks.append(asyncio.create_task(self._read(self._shell)))
        return True

    async def _read(self, shell: asyncssh.SSHClientProcess) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, ConnectionError):
            while chunk := await shell.stdout.read(READ_SIZE):
                await self._send([("operation_type", "command_response"), ("tunnel_service_type", "ssh"),
                                  ("request_id", self._request_id), ("data", cjson_string(chunk))])
        if shell is self._shell:
            await self._disconnect(CHANNEL_CLOSED_ID, "408", "SSH idles for too long, the session will be closed")

    async def _disconnect(self, rid: str, code: str, text: str) -> None:
        await self._send([("operation_type", "disconnect"), ("tunnel_service_type", "ssh"), ("request_id", rid),
                          ("data", {"status_code": code, "status_msg": text})])

    async def _send(self, fields: list[tuple[str, Any]]) -> None:
        text = cjson_print(fields)
        if self.ws is not None and not self.ws.closed:
            self.sent.append(text)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_frame(text.encode("utf-8", "surrogateescape"), aiohttp.WSMsgType.TEXT)

    async def _end_shell(self) -> None:
        shell, conn, self._shell, self._conn = self._shell, self._conn, None, None
        if shell is not None:
            shell.close()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    async def _drop_ws(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

    async def stop(self) -> None:
        await self._end_shell()
        await self._drop_ws()
        if self._mqtt is not None and self._mqtt.returncode is None:
            self._mqtt.kill()
            await self._mqtt.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()
