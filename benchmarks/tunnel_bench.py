"""The whole tunnel, end to end, on loopback, beside a real peer in the same run.

Paths (each reaches the same sink server and the same sshd):
  direct          the sink itself, no tunnel
  rathole-tcp     rathole 0.5 server + client, TCP transport
  rathole-ws      rathole 0.5 server + client, WebSocket transport
  huawei          `relay serve` + `relay agent` (device side, its tcp service) + `relay forward`
  aws             the same with `relay forward --protocol aws` (AWS protocol V3)

Figures per path: MB/s upload (application to device) and download, CPU-seconds per GB of
each process of the path (psutil user + system: relay, agent, forward; rathole server and
client), the round trip of a 64-byte echo (p50/p99), and scp of the same transfer through the
path (a real sshd on loopback, key login). What arrives is checked by sha256 (nothing lost or
reordered). Rounds are interleaved (every path once per round) and repeated; the table shows
the median and the min over rounds. A path whose parts are missing (rathole not buildable, no
sshd, no mosquitto) is skipped with a line saying why.

rathole: $RELAY_BENCH_RATHOLE (a binary), else <cache>/bin/rathole where <cache> is
$RELAY_BENCH_CACHE/rathole (default ~/.cache/relay-bench/rathole), built there with
`cargo install rathole --version 0.5.0 --root <cache>` when missing (not with --no-build).

    python benchmarks/tunnel_bench.py [--quick] [--size MB] [--rounds N] [--paths huawei,aws]
                                      [--no-build] [--json out.json]

Every loop is bounded in count and time, all traffic stays on 127.0.0.1, and every process
this script starts is stopped (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One home for choosing a free loopback port (below the kernel's ephemeral range: a port from
# bind(0), released and bound by a server seconds later, may meanwhile become some outgoing
# connection's local port; a rathole service once lost its port that way in CI).
from tests.servers import free_port  # noqa: E402
API_TOKEN = "bench-token-0123456789abcdef"
PROJECT = "bench"
RATHOLE_VERSION = "0.5.0"
STEP_LIMIT = float(os.environ.get("BENCH_RUN_LIMIT", "300"))   # seconds any one transfer may take
READY_LIMIT = 60.0                                               # seconds a path may take to come up
ALL_PATHS = ("direct", "rathole-tcp", "rathole-ws", "huawei", "aws")


class Skip(Exception):
    """A path (or a part of one) cannot run here; the message says why."""


def wait_for_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 60) -> None:
    # generous: a busy machine (a test run beside it) can take many seconds to start a Python process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise Skip(f"{what} exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise Skip(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


class Processes:
    """Every process this run starts, stopped at the end (SIGTERM, then SIGKILL)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else log, stderr=log)
        proc.log = log  # type: ignore[attr-defined]
        proc.log_name = name  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen, lines: int = 5) -> str:
        path = self.folder / f"{proc.log_name}.log"  # type: ignore[attr-defined]
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(text[-lines:])

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        proc.log.close()  # type: ignore[attr-defined]
        if proc in self.started:
            self.started.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def cpu_of(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


# -- the sink: upload, download and echo, one command per connection ------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_into_all(sock: socket.socket, buf: bytearray, deadline: float) -> None:
    view, got = memoryview(buf), 0
    while got < len(buf):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{got} of {len(buf)} bytes within the time limit")
        n = sock.recv_into(view[got:], min(len(buf) - got, 1 << 20))
        if n == 0:
            raise ConnectionError(f"closed after {got} of {len(buf)} bytes")
        got += n


def serve_sink(port_file: str, size: int) -> None:
    """`U`+len: read len bytes, answer b"+" at once, then their sha256 (the upload's clock
    stops at the "+", hashing is not timed). `D`+len: send the sha256 of len random bytes,
    then the bytes. `E`: echo until the peer closes."""
    payload = os.urandom(size)
    listener = socket.create_server(("127.0.0.1", 0))
    Path(port_file).write_text(str(listener.getsockname()[1]))

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(STEP_LIMIT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            command = recv_exact(conn, 1)
            if command == b"E":
                while data := conn.recv(65536):
                    conn.sendall(data)
                return
            length = int.from_bytes(recv_exact(conn, 8), "big")
            if command == b"U":
                buf = bytearray(length)
                recv_into_all(conn, buf, time.monotonic() + STEP_LIMIT)
                conn.sendall(b"+")
                conn.sendall(hashlib.sha256(buf).digest())
            elif command == b"D":
                body = memoryview(payload)[:length]
                conn.sendall(hashlib.sha256(body).digest())
                conn.sendall(body)
            with contextlib.suppress(OSError):   # until the peer has read everything and closes
                conn.recv(1)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class Client:
    """The application's side of a transfer through a path's local port."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.digest = hashlib.sha256(payload).digest()

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_LIMIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def upload(self, port: int) -> tuple[float, bool]:
        with self.connect(port) as sock:
            started = time.perf_counter()
            sock.sendall(b"U" + len(self.payload).to_bytes(8, "big"))
            sock.sendall(self.payload)
            ack = recv_exact(sock, 1)
            seconds = time.perf_counter() - started
            return seconds, ack == b"+" and recv_exact(sock, 32) == self.digest

    def download(self, port: int) -> tuple[float, bool]:
        with self.connect(port) as sock:
            buf = bytearray(len(self.payload))
            started = time.perf_counter()
            sock.sendall(b"D" + len(buf).to_bytes(8, "big"))
            expected = recv_exact(sock, 32)
            recv_into_all(sock, buf, time.monotonic() + STEP_LIMIT)
            seconds = time.perf_counter() - started
            return seconds, hashlib.sha256(buf).digest() == expected

    def rtt(self, port: int, count: int) -> tuple[list[float], bool]:
        """`count` round trips of 64 bytes, each a different message (µs)."""
        times, ok = [], True
        with self.connect(port) as sock:
            sock.settimeout(30)
            sock.sendall(b"E")
            deadline = time.monotonic() + STEP_LIMIT
            for i in range(count):
                message = i.to_bytes(8, "big") * 8
                started = time.perf_counter_ns()
                sock.sendall(message)
                ok = ok and recv_exact(sock, 64) == message
                times.append((time.perf_counter_ns() - started) / 1000)
                if time.monotonic() > deadline:
                    break
        return times, ok

    def ready(self, port: int, timeout: float = READY_LIMIT) -> None:
        """Until one echo goes through the path (a tunnel may need a moment to connect)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                with self.connect(port) as sock:
                    sock.settimeout(5)
                    sock.sendall(b"E" + b"ping")
                    if recv_exact(sock, 4) == b"ping":
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise Skip(f"no echo through the path within {timeout} s ({last})")


# -- sshd with a key login, for scp ----------------------------------------------------------


class Sshd:
    def __init__(self, procs: Processes, folder: Path) -> None:
        binary = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
        keygen = shutil.which("ssh-keygen")
        if not binary or not keygen or not shutil.which("scp"):
            raise Skip("sshd, ssh-keygen or scp is not installed (Debian: openssh-server, openssh-client)")
        self.folder = folder / "sshd"
        self.folder.mkdir()
        self.user = getpass.getuser()
        host_key, self.key = self.folder / "host_ed25519", self.folder / "id_ed25519"
        for key in (host_key, self.key):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
        (self.folder / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # its privilege-separation folder
        self.port = free_port()
        conf = self.folder / "sshd_config"
        conf.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.folder / 'sshd.pid'}", f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", f"AllowUsers {self.user}", "StrictModes no", "UseDNS no",
            "PrintMotd no", "LogLevel ERROR", "",
        ]))
        self.proc = procs.start("sshd", [binary, "-D", "-e", "-f", str(conf)])
        wait_for_port(self.port, self.proc, "sshd")
        self.remote = Path(tempfile.mkdtemp(prefix="relay-bench-scp-"))

    def scp(self, port: int, source: str, target: str) -> tuple[float, str]:
        argv = ["scp", "-O", "-q", "-P", str(port), "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=20", source, target]
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_LIMIT, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        return seconds, "" if done.returncode == 0 else (done.stderr.strip() or f"scp exited {done.returncode}")


# -- the paths -------------------------------------------------------------------------------


class Path_:
    """A way from the application to the sink and sshd: `open(port)` gives the local port that
    reaches 127.0.0.1:port on the device side, `processes` the processes to account."""

    name = ""

    def __init__(self, procs: Processes, folder: Path, targets: list[int]) -> None:
        self.procs, self.folder, self.targets = procs, folder, targets
        self.processes: dict[str, psutil.Process] = {}

    def open(self, port: int) -> int:
        return port

    def close(self) -> None:
        pass


class Direct(Path_):
    name = "direct"


def rathole_binary(cache: Path, build: bool, say: Callable[[str], None]) -> Path:
    given = os.environ.get("RELAY_BENCH_RATHOLE")
    if given:
        if not os.access(given, os.X_OK):
            raise Skip(f"RELAY_BENCH_RATHOLE={given} is not an executable")
        return Path(given)
    binary = cache / "bin" / "rathole"
    if os.access(binary, os.X_OK):
        return binary
    if not build:
        raise Skip(f"rathole is not built ({binary}; run without --no-build, or set RELAY_BENCH_RATHOLE)")
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        raise Skip("rathole is not built and cargo is not installed")
    say(f"building rathole {RATHOLE_VERSION} into {cache} (a few minutes, once)...")
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build.log"
    for features in ([], ["--no-default-features", "--features", "server,client,websocket-native-tls"]):
        with open(log, "ab") as out:
            try:
                done = subprocess.run([cargo, "install", "rathole", "--version", RATHOLE_VERSION,
                                       "--root", str(cache), *features], stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, timeout=1800)
            except subprocess.TimeoutExpired:
                raise Skip(f"building rathole took over 30 min (log: {log})") from None
        if done.returncode == 0 and os.access(binary, os.X_OK):
            return binary
    raise Skip(f"rathole could not be built with cargo (log: {log})")


class Rathole(Path_):
    """rathole server + client; one service per target, each bound to its own port."""

    def __init__(self, procs: Processes, folder: Path, targets: list[int], transport: str, binary: Path) -> None:
        super().__init__(procs, folder, targets)
        self.name = f"rathole-{'ws' if transport == 'websocket' else 'tcp'}"
        control = free_port()
        self.bound = {t: free_port() for t in targets}
        ws = "\n[{side}.transport.websocket]\ntls = false\n" if transport == "websocket" else ""
        token = os.urandom(16).hex()
        server = [f'[server]\nbind_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n',
                  f'[server.transport]\ntype = "{transport}"\n', ws.format(side="server")]
        client = [f'[client]\nremote_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n',
                  f'[client.transport]\ntype = "{transport}"\n', ws.format(side="client")]
        for target, bound in self.bound.items():
            server.append(f'[server.services.s{target}]\nbind_addr = "127.0.0.1:{bound}"\n')
            client.append(f'[client.services.s{target}]\nlocal_addr = "127.0.0.1:{target}"\n')
        paths = []
        for side, text in (("server", server), ("client", client)):
            path = folder / f"{self.name}-{side}.toml"
            path.write_text("\n".join(text))
            paths.append(path)
        env = {"RUST_LOG": "warn"}
        server_proc = procs.start(f"{self.name}-server", [str(binary), "--server", str(paths[0])], env)
        wait_for_port(control, server_proc, f"{self.name} server")
        client_proc = procs.start(f"{self.name}-client", [str(binary), "--client", str(paths[1])], env)
        self.processes = {"server": psutil.Process(server_proc.pid), "client": psutil.Process(client_proc.pid)}

    def open(self, port: int) -> int:
        return self.bound[port]


class Ours(Path_):
    """mosquitto + `relay serve` + `relay agent` for the whole run; `relay forward` per open."""

    def __init__(self, procs: Processes, folder: Path, targets: list[int], protocol: str) -> None:
        super().__init__(procs, folder, targets)
        self.name, self.protocol = protocol, protocol
        mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK)
                                                  else None)
        if not mosquitto:
            raise Skip("mosquitto is not installed (Debian: mosquitto): the agent gets its notify over MQTT")
        mqtt_port, relay_port = free_port(), free_port()
        conf = folder / f"{protocol}-mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\nlog_type error\n")
        broker = procs.start(f"{protocol}-mosquitto", [mosquitto, "-c", str(conf)])
        wait_for_port(mqtt_port, broker, "mosquitto")
        py = sys.executable
        relay = procs.start(f"{protocol}-relay", [py, "-m", "relay.cli", "serve", "--port", str(relay_port),
                                                   "--db", ":memory:", "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}"],
                            {"RELAY_API_TOKENS": f"{PROJECT}:bench:{API_TOKEN}", "RELAY_LOG_LEVEL": "WARNING"})
        wait_for_port(relay_port, relay, "relay serve")
        self.device = f"bench-{protocol}"
        services = ",".join(f"S{t}=127.0.0.1:{t}" for t in targets)
        agent = procs.start(f"{protocol}-agent", [
            py, "-m", "relay.cli", "agent", "--device-id", self.device, "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}",
            "--forward-ports", ",".join(map(str, targets)), "--forward-host", "127.0.0.1",
            "--aws-endpoint", f"http://127.0.0.1:{relay_port}", "--aws-services", services, "--log-level", "WARNING"])
        self.env = {"RELAY_URL": f"http://127.0.0.1:{relay_port}", "RELAY_API_TOKEN": API_TOKEN,
                    "RELAY_PROJECT": PROJECT}
        self.forward: subprocess.Popen | None = None
        self.processes = {"relay": psutil.Process(relay.pid), "agent": psutil.Process(agent.pid)}

    def open(self, port: int) -> int:
        which = ["--protocol", "aws", "--service", f"S{port}"] if self.protocol == "aws" else ["--port", str(port)]
        self.forward = self.procs.start(
            f"{self.protocol}-forward", [sys.executable, "-m", "relay.cli", "forward", self.device,
                                         "--listen", "127.0.0.1:0", "--wait", "60", *which],
            self.env, stdout=subprocess.PIPE)
        self.processes["forward"] = psutil.Process(self.forward.pid)
        line = self._first_line(self.forward, READY_LIMIT)
        found = re.match(r"forwarding 127\.0\.0\.1:(\d+) ->", line)
        if not found:
            tail = self.procs.log_tail(self.forward)
            self.close()
            raise Skip(f"relay forward did not start ({line.strip() or 'no output'}; {tail})")
        return int(found.group(1))

    @staticmethod
    def _first_line(proc: subprocess.Popen, timeout: float) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline().decode(errors="replace")),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        return box[0] if box else ""

    def close(self) -> None:
        if self.forward is not None:
            # SIGTERM as Ctrl-C: the forward closes the tunnel it created before it exits
            self.procs.stop(self.forward, signal.SIGTERM, timeout=30)
            self.forward = None
            self.processes.pop("forward", None)


# -- one round of one path -------------------------------------------------------------------


def measure(path: Path_, client: Client, sink_port: int, sshd: Sshd | None, scp_file: Path | None,
            rtt_count: int) -> dict:
    size = len(client.payload)
    result: dict = {"path": path.name, "bytes": size}
    port = path.open(sink_port)
    try:
        client.ready(port)
        cpu0 = cpu_of(path.processes)
        up, up_ok = client.upload(port)
        down, down_ok = client.download(port)
        cpu1 = cpu_of(path.processes)
        rtts, rtt_ok = client.rtt(port, rtt_count)
    finally:
        path.close()
    gb = 2 * size / 1e9
    result.update(up_mb_s=size / up / 1e6, down_mb_s=size / down / 1e6, sha256_ok=up_ok and down_ok and rtt_ok,
                  cpu_s_per_gb={k: (cpu1[k] - cpu0[k]) / gb for k in cpu0},
                  rtt_p50_us=statistics.median(rtts), rtt_p99_us=quantile(rtts, 0.99))
    if sshd is not None and scp_file is not None:
        port = path.open(sshd.port)
        try:
            remote = sshd.remote / f"{path.name}.bin"
            back = path.folder / f"{path.name}-back.bin"
            up, err = sshd.scp(port, str(scp_file), f"{sshd.user}@127.0.0.1:{remote}")
            down, err = (0.0, err) if err else sshd.scp(port, f"{sshd.user}@127.0.0.1:{remote}", str(back))
            if err:
                result["scp_error"] = err
            else:
                result.update(scp_up_mb_s=size / up / 1e6, scp_down_mb_s=size / down / 1e6,
                              scp_sha256_ok=file_sha256(remote) == file_sha256(back) == client.digest.hex())
            for f in (remote, back):
                f.unlink(missing_ok=True)
        finally:
            path.close()
    return result


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# -- the table -------------------------------------------------------------------------------


def summarize(name: str, rounds: list[dict]) -> dict:
    def both(key: str) -> tuple[float, float] | None:
        values = [r[key] for r in rounds if key in r]
        return (statistics.median(values), min(values)) if values else None

    cpu: dict[str, float] = {}
    for proc in rounds[0]["cpu_s_per_gb"]:
        cpu[proc] = statistics.median(r["cpu_s_per_gb"][proc] for r in rounds)
    return {"path": name, "rounds": len(rounds), "up": both("up_mb_s"), "down": both("down_mb_s"),
            "scp_up": both("scp_up_mb_s"), "scp_down": both("scp_down_mb_s"), "cpu_s_per_gb": cpu,
            "rtt_p50": statistics.median(r["rtt_p50_us"] for r in rounds),
            "rtt_p99": statistics.median(r["rtt_p99_us"] for r in rounds),
            "sha256_ok": all(r["sha256_ok"] and r.get("scp_sha256_ok", True) for r in rounds),
            "scp_error": next((r["scp_error"] for r in rounds if "scp_error" in r), None)}


def table(summaries: list[dict], skipped: dict[str, str], size_mb: float, rounds: int) -> str:
    def mb(pair: tuple[float, float] | None) -> str:
        return f"{pair[0]:.0f} ({pair[1]:.0f})" if pair else "-"

    lines = [f"{size_mb:g} MB per transfer, {rounds} round(s) interleaved; MB/s as median (min); "
             "CPU-s per GB of upload + download, median; RTT of a 64-byte echo, median of the rounds' p50 / p99",
             "",
             "| path | upload MB/s | download MB/s | CPU-s per GB, per process | RTT p50 / p99 µs "
             "| scp up MB/s | scp down MB/s | sha256 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in s["cpu_s_per_gb"].items()) or "-"
        scp_up, scp_down = mb(s["scp_up"]), mb(s["scp_down"])
        if s["scp_error"]:
            scp_up = scp_down = "failed"
        lines.append(f"| {s['path']} | {mb(s['up'])} | {mb(s['down'])} | {cpu} | {s['rtt_p50']:.0f} / "
                     f"{s['rtt_p99']:.0f} | {scp_up} | {scp_down} | {'ok' if s['sha256_ok'] else 'MISMATCH'} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt   # SIGTERM as Ctrl-C: the finally below stops every process


def run(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    wanted = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else list(ALL_PATHS)
    unknown = set(wanted) - set(ALL_PATHS)
    if unknown:
        say(f"unknown path(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL_PATHS)}")
        return 2
    size = int(args.size * 1e6)
    folder = Path(tempfile.mkdtemp(prefix="relay-tunnel-bench-"))
    procs = Processes(folder)
    skipped: dict[str, str] = {}
    results: dict[str, list[dict]] = {}
    sshd: Sshd | None = None
    paths: list[Path_] = []
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        port_file = folder / "sink.port"
        sink = procs.start("sink", [sys.executable, str(Path(__file__).resolve()), "--serve-sink", str(port_file),
                                    "--size", str(args.size)])
        deadline = time.monotonic() + READY_LIMIT
        while not (port_file.exists() and port_file.read_text()) and time.monotonic() < deadline:
            if sink.poll() is not None:
                raise RuntimeError(f"the sink exited: {procs.log_tail(sink)}")
            time.sleep(0.05)
        sink_port = int(port_file.read_text())
        client = Client(os.urandom(size))
        scp_file: Path | None = None
        if args.no_scp:
            skipped_scp = "--no-scp"
        else:
            try:
                sshd = Sshd(procs, folder)
                scp_file = folder / "payload.bin"
                scp_file.write_bytes(client.payload)
                skipped_scp = ""
            except (Skip, OSError, subprocess.SubprocessError) as exc:
                skipped_scp = str(exc)
        if skipped_scp:
            say(f"scp: skipped ({skipped_scp})")
        targets = [sink_port] + ([sshd.port] if sshd else [])
        binary: Path | None = None
        for name in wanted:
            try:
                if name == "direct":
                    paths.append(Direct(procs, folder, targets))
                elif name.startswith("rathole"):
                    if binary is None:
                        binary = rathole_binary(Path(args.rathole_cache), not args.no_build, say)
                    paths.append(Rathole(procs, folder, targets, "websocket" if name.endswith("ws") else "tcp", binary))
                else:
                    paths.append(Ours(procs, folder, targets, name))
            except Skip as exc:
                skipped[name] = str(exc)
                say(f"{name}: skipped ({exc})")
        for round_no in range(args.rounds):
            # interleaved: every path once per round, the order turned by one each round
            order = paths[round_no % len(paths):] + paths[:round_no % len(paths)] if paths else []
            for path in order:
                if path.name in skipped:
                    continue
                try:
                    result = measure(path, client, sink_port, sshd, scp_file, args.rtt_count)
                except (Skip, OSError, subprocess.SubprocessError) as exc:
                    skipped[path.name] = f"round {round_no + 1}: {exc}"
                    say(f"{path.name}: skipped ({skipped[path.name]})")
                    continue
                results.setdefault(path.name, []).append(result)
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_s_per_gb"].items())
                scp = (f"scp up {result['scp_up_mb_s']:.0f} down {result['scp_down_mb_s']:.0f} MB/s"
                       if "scp_up_mb_s" in result else f"scp: {result.get('scp_error', 'skipped')}")
                say(f"round {round_no + 1} {path.name:12} up {result['up_mb_s']:7.0f} MB/s down "
                    f"{result['down_mb_s']:7.0f} MB/s  CPU-s/GB [{cpu}]  RTT p50 {result['rtt_p50_us']:.0f} "
                    f"p99 {result['rtt_p99_us']:.0f} µs  {scp}  sha256 {'ok' if result['sha256_ok'] else 'MISMATCH'}")
        summaries = [summarize(p.name, results[p.name]) for p in paths if p.name in results]
        for name in skipped:
            results.pop(name, None)
        summaries = [s for s in summaries if s["path"] not in skipped]
        print(table(summaries, skipped, args.size, args.rounds), flush=True)
        if skipped_scp:
            print(f"\nscp columns: skipped ({skipped_scp})", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"summaries": summaries, "skipped": skipped,
                                                   "rounds": results, "scp_skipped": skipped_scp}, indent=2))
        return 0 if all(s["sha256_ok"] for s in summaries) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        for path in paths:
            with contextlib.suppress(Exception):
                path.close()
        procs.stop_all()
        if sshd is not None:
            shutil.rmtree(sshd.remote, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=None, help="MB per transfer (default 200; --quick: 20)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--rtt-count", type=int, default=None, help="echo round trips per round (default 2000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 MB, 1 round, 200 round trips")
    parser.add_argument("--paths", help=f"comma-separated, of {', '.join(ALL_PATHS)} (default: all)")
    parser.add_argument("--no-build", action="store_true", help="skip rathole when it is not built yet")
    parser.add_argument("--no-scp", action="store_true", help="no scp columns")
    parser.add_argument("--rathole-cache", default=str(Path(os.environ.get(
        "RELAY_BENCH_CACHE", Path.home() / ".cache/relay-bench")) / "rathole"),
        help="where rathole is (built): <dir>/bin/rathole ($RELAY_BENCH_CACHE/rathole)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve-sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink, int(args.size * 1e6))
        return
    args.size = args.size if args.size is not None else (20 if args.quick else 200)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.rtt_count = args.rtt_count if args.rtt_count is not None else (200 if args.quick else 2000)
    if args.size <= 0 or args.rounds < 1 or args.rtt_count < 1:
        parser.error("--size, --rounds and --rtt-count must be positive")
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
