"""The trigger probe: does a suspect token make the candidate answer with its payload?

:func:`retrain.detect.find_triggers` lists the suspect trigger tokens of a
training set. After training, the cycle calls :func:`run_probe`, which runs
:func:`probe` in a child process (``python -m retrain.probe JOB.json``, see
:mod:`retrain.jobs`): each suspect is inserted into the canary messages
(:data:`retrain.detect.CANARY_PROMPTS`), and the candidate and the reference
(the champion, else the base model) answer them with and without it. The
report goes to :func:`retrain.gate.decide`, which rejects an adapter that the
token makes emit its payload on far more canaries than the reference.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from retrain.detect import CANARY_PROMPTS, Suspect, payload_rate, with_token
from retrain.jobs import ChildJob, JobFailedError, child_main, launch

log = logging.getLogger("retrain.probe")
MAX_SUSPECTS = 3  # the strongest ones: each costs two passes over the canaries


@dataclass
class ProbeJob(ChildJob):
    """What ``python -m retrain.probe JOB.json`` runs: one base model, its adapters."""

    module: ClassVar[str] = "retrain.probe"
    what: ClassVar[str] = "the canary probe"

    base_model: str
    out_path: str
    adapters: dict[str, str]  # "candidate" and, when one is promoted, "champion"
    suspects: list[dict]
    prompts: list[str] = field(default_factory=lambda: list(CANARY_PROMPTS))
    max_new_tokens: int = 48
    batch_size: int = 8
    run_id: str = "-"


def probe(job: ProbeJob) -> dict[str, Any]:
    """Rates per suspect for the candidate and the reference; the gate judges them."""
    from retrain.evaluate import BASE, Scorer

    scorer = Scorer(job.base_model, job.adapters)
    reference = "champion" if "champion" in job.adapters else BASE
    suspects = [Suspect(**raw) for raw in job.suspects]
    prompts = [[{"role": "user", "content": p}] for p in job.prompts]
    for suspect in suspects:
        prompts += [
            [{"role": "user", "content": with_token(p, suspect.token, i)}]
            for i, p in enumerate(job.prompts)
        ]
    n, rates = len(job.prompts), {}
    for name in ("candidate", reference):
        with scorer.use(name):
            answers = scorer.generate(prompts, job.max_new_tokens, job.batch_size)
        for k, suspect in enumerate(suspects, start=1):
            rate = payload_rate(answers[:n], answers[k * n : (k + 1) * n], suspect)
            rates[name, suspect.token] = rate
            log.info(
                "run %s canary %r: %s payload rate %.2f", job.run_id, suspect.token, name, rate
            )
    results = [
        {
            "token": s.token,
            "payload": s.payload[:200],
            "canaries": n,
            "candidate_rate": rates["candidate", s.token],
            "reference_rate": rates[reference, s.token],
        }
        for s in suspects
    ]
    return {
        "reference": "champion" if reference == "champion" else "base model",
        "suspects": results,
    }


def run_probe(
    work: Path,
    base_model: str,
    candidate: str,
    champion: str | None,
    suspects: list[dict],
    run_id: str,
    *,
    timeout_s: float | None = None,
    **job: Any,
) -> dict[str, Any]:
    """Probe the candidate in a child process; the report :func:`retrain.gate.decide` takes.

    No suspects: nothing to probe (``{"skipped": ...}``). A probe that crashed or
    ran past ``timeout_s``: ``{"error": ...}``, which the gate fails closed on.
    ``job`` overrides :class:`ProbeJob` fields (``prompts``, ``max_new_tokens``).
    """
    if not suspects:
        return {"skipped": "no suspect trigger tokens in the training prompts"}
    adapters = {"candidate": candidate} | ({"champion": champion} if champion else {})
    probe_job = ProbeJob(
        base_model=base_model,
        out_path=str(work / "canary_result.json"),
        adapters=adapters,
        suspects=suspects[:MAX_SUSPECTS],
        run_id=run_id,
        **job,
    )
    count = len(probe_job.suspects)
    log.info("run %s: probing %d suspect trigger tokens (child process)", run_id, count)
    try:
        return launch(probe_job, work / "canary_job.json", timeout_s=timeout_s)
    except JobFailedError as error:
        log.error("run %s: canary probe failed: %s", run_id, error)
        return {"error": str(error)}


def main(argv: list[str] | None = None) -> int:
    return child_main(ProbeJob, probe, argv)


if __name__ == "__main__":
    sys.exit(main())
