"""The Streamlit page of fingpt. `fingpt-ui [streamlit options]` runs `streamlit run ui/app.py`."""

import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().with_name("app.py")
# for the page's users: no developer toolbar (Streamlit's "Deploy" means nothing here), no usage stats
OPTIONS = ["--client.toolbarMode", "viewer", "--browser.gatherUsageStats", "false"]


def streamlit_command(*args: str) -> list[str]:
    """`streamlit run ui/app.py` with the page's options, then `args` (e.g. --server.port 8501)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), *OPTIONS, *args]


def main(argv: list[str] | None = None) -> int:
    """Run the page; extra arguments go to `streamlit run`."""
    try:
        return subprocess.call(streamlit_command(*(sys.argv[1:] if argv is None else argv)))
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too, which shuts down on its own
        return 130
