"""The serving launcher's own parts: the deploy log rotates instead of growing without bound."""

from __future__ import annotations

import subprocess
import sys

ROTATING = """
import sys, time
import tasks.serving.launch as launch
launch.LOG_BYTES = 2000
launch._rotate_output(sys.argv[1])
for i in range(200):
    print(f"line {i:03d} " + "x" * 90, flush=True)
time.sleep(1)  # the pump writes from its own thread
"""


def test_the_server_output_rotates(tmp_path):
    log = tmp_path / "deploy.log"
    subprocess.run([sys.executable, "-c", ROTATING, str(log)], check=True, timeout=60)
    kept = sorted(tmp_path.iterdir())
    assert [p.name for p in kept] == ["deploy.log", "deploy.log.1", "deploy.log.2", "deploy.log.3"]
    assert all(p.stat().st_size <= 2000 + 100 for p in kept)
    assert "line 199" in log.read_text()  # the newest lines are in the live file
