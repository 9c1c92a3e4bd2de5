"""Start/stop/restart the real GStreamer RTSP server (tests/rtsp_server.py) from tests.

Use the `rtsp_server` fixture (conftest.py), or `RtspServer` directly.

Under CI=true a missing GStreamer/python3-gi install fails the test instead of skipping it.
"""

from __future__ import annotations

import functools
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port

SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi is installed for Debian's Python, not the venv


@functools.cache
def gst_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is not installed"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [n for n in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(n)];"
        "print(' '.join(missing))"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if out.returncode != 0:
        return "python3-gi with GstRtspServer is not installed: " + out.stderr.strip().splitlines()[-1:][0]
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()}"
    return None


class RtspServer:
    """One rtsp_server.py process on a fixed loopback port; stop() and start() keep the port."""

    def __init__(
        self,
        port: int | None = None,
        path: str = "/cam",
        fps: int = 15,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.path = path
        self.fps = fps
        self.user = user
        self.password = password
        self.proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server)

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [
            SYSTEM_PYTHON,
            str(SCRIPT),
            "--port",
            str(self.port),
            "--path",
            self.path,
            "--fps",
            str(self.fps),
        ]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        deadline = time.monotonic() + timeout
        # The port may still be held for a moment after a stop: retry until it is free.
        while True:
            # stderr to a file: an unread pipe could fill up and stall the server.
            self._stderr.seek(0)
            self._stderr.truncate()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
            line = self._read_line(deadline)
            if line.startswith("READY"):
                break
            self._reap()
            if time.monotonic() > deadline:
                self._stderr.seek(0)
                raise RuntimeError(f"RTSP server did not start: {line!r} {self._stderr.read()[-2000:]}")
            time.sleep(0.2)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"RTSP server on port {self.port} does not accept connections")

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        return self.proc.stdout.readline().strip() if ready else ""

    def stop(self) -> None:
        """Terminate the server (clients see the connection end)."""
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open but sends nothing (a hung camera)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self._reap()
        self._stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
