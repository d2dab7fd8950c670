"""CI tells the truth: with CI=true (as .ci/run sets it), a browser test that cannot run fails."""

import pytest

from tests.ui import test_browser


def test_without_chromium_the_browser_tests_skip_but_fail_with_ci_true(tmp_path, monkeypatch):
    monkeypatch.setattr(test_browser, "CHROMIUM", tmp_path / "chromium")  # not there
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"needs {tmp_path / 'chromium'} \\(make chromium\\)"):
        test_browser.require_browser()
    monkeypatch.setenv("CI", "true")
    message = f"CI=true and the browser test cannot run: it needs {tmp_path / 'chromium'} (make chromium)"
    with pytest.raises(pytest.fail.Exception) as failed:
        test_browser.require_browser()
    assert str(failed.value) == message
