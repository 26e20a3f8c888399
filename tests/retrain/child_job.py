"""A child job for tests/retrain/test_jobs.py: ``python -m tests.retrain.child_job JOB.json``
echoes its job back, or crashes, hangs or exits without a result, as the job asks."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from retrain.jobs import ChildJob, child_main


@dataclass
class Inner:
    rank: int = 8
    targets: str = "all-linear"


@dataclass
class EchoJob(ChildJob):
    module: ClassVar[str] = "tests.retrain.child_job"
    what: ClassVar[str] = "the echo job"

    out_path: str
    action: str = "echo"  # echo | crash | hang | no_result
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    run_id: str = "-"


def work(job: EchoJob) -> dict:
    print("chatter a child prints on stdout")
    if job.action == "crash":
        sys.exit(3)
    if job.action == "hang":
        time.sleep(120)
    if job.action == "no_result":
        os._exit(0)
    return {"inner": asdict(job.inner), "maybe_type": type(job.maybe).__name__}


if __name__ == "__main__":
    sys.exit(child_main(EchoJob, work, None))
