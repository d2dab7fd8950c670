"""The demo's last step (`make demo`): fingpt-serve and the page, announced only once both are up.

    python -m ui.demo --model models/demo [--api-port 8000] [--ui-port 8501] [--timeout 300]

Each process writes its log to --logs (serve.log, page.log). The URLs are printed once the
server's /health answers 200 (its model is loaded) and the page's /_stcore/health answers 200.
If a process ends first, or --timeout passes, it says which one and shows the end of its log.
Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

from ui import streamlit_command


@dataclass
class Service:
    name: str
    command: list[str]
    health: str  # answers 200 once the service is up
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            env = {**os.environ, **self.env}
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def up(self) -> bool:
        try:
            with urlopen(self.health, timeout=2) as response:
                return response.status == 200
        except OSError:  # refused, 503 while the model loads, or no answer yet
            return False

    def stopped(self) -> str | None:
        """Why the process ended, with the end of its log; None while it runs."""
        if self.process.poll() is None:
            return None
        status = self.process.returncode
        return f"{self.name} stopped (exit status {status}); the end of {self.log}:\n{self.tail()}"

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (nothing)"


def stop(services: list[Service], grace: float = 10) -> None:
    """SIGTERM to every process at once; SIGKILL to those still running `grace` seconds later."""
    running = [s.process for s in services if s.process and s.process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(services: list[Service], timeout: float) -> str | None:
    """None once every service is up; else why not (a process ended, or the time ran out)."""
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if why := service.stopped():
                return why
        waiting = [s for s in services if not s.up()]
        if not waiting:
            return None
        if time.monotonic() > deadline:
            late = waiting[0]
            return (
                f"{late.name} did not answer {late.health} within {timeout:.0f} s; "
                f"the end of {late.log}:\n{late.tail()}"
            )
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the bundle to serve")
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--ui-port", type=int, default=8501)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for both (default 300)")
    parser.add_argument("--logs", type=Path, default=Path("outputs/demo"), help="where the logs go")
    args = parser.parse_args(argv)
    # Ctrl-C, and a plain kill, stop both processes: even where SIGINT came in ignored (a
    # background job of a shell without job control), as it does for what such a job starts
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    api, page = f"http://127.0.0.1:{args.api_port}", f"http://127.0.0.1:{args.ui_port}"
    serve = [sys.executable, "-m", "serving.app", "--model", args.model, "--port", str(args.api_port)]
    page_options = f"--server.port {args.ui_port} --server.address 127.0.0.1 --server.headless true".split()
    services = [
        Service("fingpt-serve", serve, f"{api}/health", args.logs / "serve.log"),
        Service(
            "the page",
            streamlit_command(*page_options),
            f"{page}/_stcore/health",
            args.logs / "page.log",
            {"FINGPT_API_URL": api},
        ),
    ]
    try:
        for service in services:
            service.start()
        if why := wait_until_up(services, args.timeout):
            print(f"fingpt demo failed: {why}", file=sys.stderr)
            return 1
        print(
            f"\nfingpt is up: open {page}  (API: {api}/docs; logs: {args.logs})  Ctrl-C stops both.",
            flush=True,
        )
        while not (why := next(filter(None, (s.stopped() for s in services)), None)):
            time.sleep(1)
        print(f"fingpt demo ended: {why}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfingpt demo stopped.")
        return 0
    finally:
        stop(services)


if __name__ == "__main__":
    sys.exit(main())
