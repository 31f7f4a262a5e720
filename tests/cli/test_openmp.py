"""OpenMP's wait policy is the user's: ``main`` loads torch with OMP_WAIT_POLICY as it found it.

libgomp's default (idle threads spin a while, then sleep) trains the demo 1.3-1.7x faster on two
idle cores than PASSIVE, which every command used to set (benchmarks/RESULTS.md, "CPU threads");
on a busy machine ``--threads 1`` does better than PASSIVE."""

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


def test_an_unset_policy_stays_unset():
    assert _policy_when_torch_loads(None) == [None]


def test_a_policy_the_user_set_is_kept():
    assert _policy_when_torch_loads("ACTIVE") == ["ACTIVE"]
