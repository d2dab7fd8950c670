"""The Streamlit page of fingpt. `fingpt-ui [streamlit options]` runs `streamlit run ui/app.py`."""

import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().with_name("app.py")


def main(argv: list[str] | None = None) -> int:
    """Run the page; extra arguments go to `streamlit run` (e.g. --server.port 8501)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return subprocess.call([sys.executable, "-m", "streamlit", "run", str(APP), *args])
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too, which shuts down on its own
        return 130
