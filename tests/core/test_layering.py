"""
The core is sans-I/O (DESIGN.md, "Layers"): importing it loads no Twisted,
zope.interface or dnspython module. A fresh interpreter checks, since this
one has loaded them all for other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("twisted", "zope", "dns")

PROGRAM = """
import json, sys
import mailframe.core, mailframe.address, mailframe.reply, mailframe.envelope
print(json.dumps(sorted(sys.modules)))
"""


def test_core_imports_no_io_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    modules = json.loads(result.stdout)
    assert "mailframe.core" in modules
    loaded = [name for name in modules if name.split(".")[0] in FORBIDDEN]
    assert loaded == []
