"""The layering of docs/architecture.md, checked by import-linter against the real import graph.

The contracts live in setup.cfg ([importlinter]): daemon above engines, no import cycle inside
engines, the TensorRT seam the only importer of tensorrt/pycuda, no PyTorch. A broken contract
names the offending import.
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    config = REPO / "setup.cfg"
    result = subprocess.run([str(lint), "--no-cache", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = re.search(r"Contracts: (\d+) kept, (\d+) broken", result.stdout)
    configured = config.read_text().count("[importlinter:contract:")
    assert summary and (int(summary[1]), int(summary[2])) == (configured, 0), result.stdout[-4000:]
