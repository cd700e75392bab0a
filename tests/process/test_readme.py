"""The README's produce/consume example works as printed, and its quick-start commands are the real ones."""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from tests.broker_harness import BrokerTree

pytestmark = pytest.mark.process
README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    return blocks[0]


def test_readme_example_sends_and_receives_its_message(tmp_path):
    tree = BrokerTree(tmp_path / "store")
    try:
        tree.start()
        # The example talks to the default namesrv address; point it at this test's namesrv.
        code = _python_block().replace("127.0.0.1:9876", tree.namesrv_addr)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README is ours
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("SendStatus.SEND_OK")
        assert "Orders ['order-1'] b'order 1 paid'" in lines
    finally:
        tree.cleanup()


def test_readme_quick_start_matches_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[test]" && ruff check . && python -m pytest -q'
    assert test_command in text and test_command in ci
    assert "pip install -e . && rmqd start --store-dir" in text
    assert os.access(README.parent / ".ci" / "run", os.X_OK)
