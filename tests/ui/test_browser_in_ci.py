"""CI tells the truth: with CI=true (as .ci/run sets it), a browser test that cannot run fails."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_with_ci_true_the_browser_tests_fail_where_they_cannot_run(tmp_path):
    env = {**os.environ, "CI": "true", "FINGPT_CHROMIUM": str(tmp_path / "chromium")}  # not there
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ui/test_browser.py"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert (
        f"CI=true and the browser test cannot run: it needs {tmp_path / 'chromium'} (make chromium)"
        in proc.stdout
    )
    assert (
        proc.stdout.rstrip()
        .splitlines()[-1]
        .endswith("3 errors in" + proc.stdout.rstrip().rsplit(" in", 1)[1])
    )
