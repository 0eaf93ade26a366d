"""A managed MQTT broker: mosquitto as a child process of the relay, with accounts.

So that `relay serve` on its defaults also gives devices a broker: when no `--mqtt-url` is
given and a `mosquitto` binary is installed, the relay runs one on 127.0.0.1:1883 (loopback
only, no persistence: the notify outbox lives in the relay's own store) and stops it when it
stops. Deployments point `--mqtt-url` at their own broker instead. Why mosquitto and not a
broker written in Python inside the relay: it is the broker deployments most often run, it
is one Debian package, it does MQTT 3.1.1 and 5 completely (retained messages, last wills,
QoS 1 and 2), and it costs the relay's event loop nothing. Standard library only.

The broker carries device tokens, so it is not anonymous (docs/security.md, MQTT): every
client logs in. The relay's own account (`relay.notifier`, a name no device id can take)
may publish notifies and read presence; each device's account, named by its device id, may
only use its own topics (`$oc/devices/{id}/...`, and read `$aws/things/{id}/tunnels/notify`),
and its client id is its user name, so it cannot take over another device's session. The
accounts live next to the API token file: `mqtt-passwd` (mosquitto's password file: salted
PBKDF2-SHA512 hashes, no password in clear) and `mqtt-relay-password.txt` (the relay's own
password, which it must present; 0600). `relay device add ID` creates a device's account and
prints its password once; the running broker picks up changes to the password file within a
second (SIGHUP).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import hmac
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from relay import config
from relay.errors import ConfigError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in EXTRA_DIRS:
        candidate = os.path.join(folder, "mosquitto")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


RELAY_ACCOUNT = "relay.notifier"          # a '.' keeps it apart from every device id
PASSWORD_FILE = "mqtt-passwd"
RELAY_PASSWORD_FILE = "mqtt-relay-password.txt"
HASH_ITERATIONS = 101      # mosquitto_passwd's; the passwords are 256 random bits, not words
RELOAD_POLL = 1.0          # seconds between looks at the password file


def accounts_folder(db: str) -> Path:
    """Where the managed broker's accounts are: next to the database and the API token file."""
    return Path(db).resolve().parent


def hash_password(password: str) -> str:
    """A password in mosquitto's password-file format (`$7$`: PBKDF2-SHA512, as mosquitto_passwd)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ITERATIONS)
    return f"$7${HASH_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False


def _write_private(path: Path, text: str) -> None:
    """Replace `path` at once with `text`, readable by its owner only."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class BrokerAccounts:
    """The managed broker's accounts in `folder`: the relay's own, and one per device."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.password_file = self.folder / PASSWORD_FILE
        self.relay_password_file = self.folder / RELAY_PASSWORD_FILE

    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time (the relay starting, `relay device add` in another process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f".{PASSWORD_FILE}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _entries(self) -> dict[str, str]:
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file {self.password_file}: {exc.strerror}") from exc
        entries = {}
        for line in text.splitlines():
            user, sep, hashed = line.strip().partition(":")
            if sep and user and not user.startswith("#"):
                entries[user] = hashed
        return entries

    def _save(self, entries: dict[str, str]) -> None:
        lines = [f"{user}:{hashed}" for user, hashed in entries.items()]
        _write_private(self.password_file,
                       "# written by the relay (relay device add/remove); mosquitto's password file format\n"
                       + "".join(line + "\n" for line in lines))

    def relay_credentials(self) -> tuple[str, str]:
        """The relay's own user name and password, created on first use."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            password = self.relay_password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            password = ""
        except OSError as exc:
            raise ConfigError(f"cannot read {self.relay_password_file}: {exc.strerror}") from exc
        if not password:
            password = secrets.token_urlsafe(32)
            _write_private(self.relay_password_file, password + "\n")
        with self._locked():
            entries = self._entries()
            if not password_matches(password, entries.get(RELAY_ACCOUNT, "")):
                entries[RELAY_ACCOUNT] = hash_password(password)
                self._save(entries)
        return RELAY_ACCOUNT, password

    def add_device(self, device_id: str, *, replace: bool = False) -> str:
        """Create (or with `replace`, renew) a device's account; returns its new password."""
        if not config.DEVICE_ID_RE.match(device_id):
            raise ConfigError(f"device id {device_id[:140]!r} must be 1-128 of A-Z a-z 0-9 _ -")
        with self._locked():
            entries = self._entries()
            if device_id in entries and not replace:
                raise ConfigError(f"device {device_id!r} has an account already; --replace gives it a new password "
                                  "(the old one stops working)")
            password = secrets.token_urlsafe(32)
            entries[device_id] = hash_password(password)
            self._save(entries)
        return password

    def remove_device(self, device_id: str) -> bool:
        with self._locked():
            entries = self._entries()
            if device_id not in entries or device_id == RELAY_ACCOUNT:
                return False
            del entries[device_id]
            self._save(entries)
        return True

    def devices(self) -> list[str]:
        return sorted(user for user in self._entries() if user != RELAY_ACCOUNT)


class ManagedBroker:
    def __init__(self, host: str, port: int, accounts: BrokerAccounts, binary: str | None = None) -> None:
        self.host = host
        self.port = port
        self.accounts = accounts
        self.binary = binary or find_mosquitto()
        self.process: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if port_answers(self.host, self.port):
            # Never hand device tokens to a broker nobody vouched for: it may be anyone's.
            raise ConfigError(
                f"something already listens on {self.host}:{self.port}, where the relay would run its own MQTT "
                f"broker. To use that broker, say so: --mqtt-url mqtt://{self.host}:{self.port} (with "
                "--mqtt-username and RELAY_MQTT_PASSWORD if it wants them; it then sees every device token); "
                "for no broker: --mqtt-url none; or stop what listens there")
        if not self.binary:
            raise ConfigError("no mosquitto binary found: install mosquitto, or give --mqtt-url (or --mqtt-url none)")
        self.accounts.relay_credentials()   # the password file exists and holds the relay's account
        self._dir = tempfile.TemporaryDirectory(prefix="relay-mosquitto-")
        conf = os.path.join(self._dir.name, "mosquitto.conf")
        acl = os.path.join(self._dir.name, "acl")
        with open(acl, "w", encoding="utf-8") as fh:
            fh.write(acl_text())
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(config_text(self.host, self.port, str(self.accounts.password_file), acl))
        accounts_read = _stamp(self.accounts.password_file)   # what mosquitto is about to read
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-c", conf,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._log_task = asyncio.create_task(self._forward_log(), name="mosquitto-log")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await asyncio.to_thread(port_answers, self.host, self.port, 0.2):
            if self.process.returncode is not None or loop.time() > deadline:
                code = self.process.returncode
                await self.stop()
                raise ConfigError(f"the managed mosquitto did not start on {self.host}:{self.port}"
                                  f" ({'exit code ' + str(code) if code is not None else 'timed out'});"
                                  f" its messages are in the log above")
            await asyncio.sleep(0.05)
        self._reload_task = asyncio.create_task(self._reload_on_change(accounts_read), name="mosquitto-accounts")
        log.info("started mosquitto on %s:%s (pid %s), accounts in %s", self.host, self.port, self.process.pid,
                 self.accounts.password_file)

    async def _reload_on_change(self, seen: tuple[int, int] | None) -> None:
        """`relay device add` (another process) writes the password file: have mosquitto read it again."""
        while self.process is not None and self.process.returncode is None:
            await asyncio.sleep(RELOAD_POLL)
            now = _stamp(self.accounts.password_file)
            if now != seen and self.process is not None:
                seen = now
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGHUP)
                log.info("MQTT accounts changed; the managed mosquitto reloads them")

    async def _forward_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            log.info("mosquitto: %s", raw.decode("utf-8", "replace").rstrip())

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
            self._reload_task = None
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            log.info("stopped mosquitto")
        if self._log_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._log_task, STOP_TIMEOUT)
            self._log_task = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel stop mosquitto when the relay dies
    without cleaning up (SIGKILL, a crash), so no orphan broker keeps the port. The kernel
    would forget this if mosquitto changed its user, which is one reason it runs as the
    relay's own user (config_text)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def config_text(host: str, port: int, password_file: str, acl_file: str) -> str:
    # `user`: a mosquitto started as root drops to the `mosquitto` user, which could not read
    # the relay's 0600 account files; it runs as the relay's own user instead (no more rights
    # than the relay, and it still dies with it).
    return (
        "# written by the relay for its managed broker\n"
        f"listener {port} {host}\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        f"acl_file {acl_file}\n"
        "use_username_as_clientid true\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "connection_messages false\n"
    )


def acl_text() -> str:
    """Who may use which topics (docs/security.md): the relay publishes notifies and reads
    presence; a device (user name = device id, `%u`) only reaches its own topics."""
    return (
        f"user {RELAY_ACCOUNT}\n"
        "topic write $oc/devices/+/sys/events/down\n"
        "topic read $oc/devices/+/sys/presence\n"
        "topic write $aws/things/+/tunnels/notify\n"
        "\n"
        "pattern readwrite $oc/devices/%u/#\n"
        "pattern read $aws/things/%u/tunnels/notify\n"
    )
