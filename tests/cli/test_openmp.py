"""Every command runs with OMP_WAIT_POLICY=PASSIVE (set by ``main`` before torch loads OpenMP),
unless the user chose a policy."""

import json
import os
import subprocess
import sys
from pathlib import Path

from nibabel.testing import data_path

SCAN = str(Path(data_path) / "anatomical.nii")

WATCH = """
import json, os, sys
seen = []
class Watch:  # records the policy at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Watch())
from medddpm.cli import main
try:
    main(["info", sys.argv[1]])
except SystemExit:
    pass
print(json.dumps(seen))
"""


def _policy_when_torch_loads(policy: str | None) -> list:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [sys.executable, "-c", WATCH, SCAN], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openmp_threads_sleep_from_the_start():
    assert _policy_when_torch_loads(None) == ["PASSIVE"]


def test_a_policy_the_user_set_is_kept():
    assert _policy_when_torch_loads("ACTIVE") == ["ACTIVE"]
