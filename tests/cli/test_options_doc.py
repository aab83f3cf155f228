"""docs/options.md's option tables are generated from the code: they never drift from --help."""

from __future__ import annotations

import subprocess
import sys

from helpers import SCRIPTS


def test_the_option_tables_equal_the_code() -> None:
    r = subprocess.run([sys.executable, str(SCRIPTS / "options_doc.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_train_option_is_in_the_page() -> None:
    sys.path.insert(0, str(SCRIPTS))
    import options_doc

    text = options_doc.generated()
    for flag in ("--model", "--multi-label", "--task", "--head-bias", "--no-head-bias", "--resume", "--cache"):
        assert f"`{flag}`" in text, flag
