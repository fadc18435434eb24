"""Start a ``zspa-serve`` process on 127.0.0.1 and wait until it is healthy (used by the
demo script and the server tests)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``zspa-serve ARGS --host 127.0.0.1 --port PORT``, its output in ``log_path``."""

    def __init__(
        self, args: list[str], log_path: Path, env: dict | None = None, *, stock: bool = False, program: list[str] | None = None
    ) -> None:
        """``stock``: vLLM's own ``serve`` with every plugin off (VLLM_PLUGINS=""), for
        comparisons; ``args`` are then vllm serve's. ``program``: another command to run
        with ``args`` (``["vllm", "serve"]``, say)."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        if stock:
            env = {**(env or {}), "VLLM_PLUGINS": ""}
            program = [sys.executable, "-c", "import sys; from zspa_serve.cli import run_vllm_serve; run_vllm_serve(sys.argv[1:])", "serve"]
        elif program is None:
            program = [shutil.which("zspa-serve", path=str(Path(sys.executable).parent)) or "zspa-serve"]
        self.name = "stock vLLM" if stock else Path(program[0]).name
        command = [*program, *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    def wait_healthy(self, timeout: float = 600, progress=None) -> float:
        """Seconds until /health answered 200; raises with the log's tail otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            if progress:
                progress(time.monotonic() - start)
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"zspa-serve not healthy after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
