"""Crashes: SIGKILL ``tuneback retrain`` at every step, over many seeds, then recover.

For each seed and each named step of a cycle (tests/hardening/crashkit.py:
STEPS; the hook is ``TUNEBACK_FAULT_AT``, see feedback/faults.py), plus one kill
of the whole process group at a random moment per seed: a fresh store with
corrections and a promoted champion adapter; a cycle killed there; then

- right after the kill: exactly one adapter promoted, every registered adapter's
  folder complete and verifying, no training or evaluation child left running;
- new corrections, and a recovery cycle that must end ``promoted`` (or ``rejected``
  by the gate when the killed run had already promoted its own trained adapter); after it:
  the killed run is ``failed`` (abandoned), no lease held, no temp or orphan
  adapter folders, no dataset folder without its row, ``CURRENT`` right.

The seed changes the training seed (so the data split and every loss) and the
moment of the random kill. Uses the tiny seeded model; SQLite unless
``--database-url`` names a PostgreSQL database (its tables are emptied per case).

    .venv/bin/python bench/crash.py --seeds 3
    .venv/bin/python bench/crash.py --seeds 1 --steps registry.inserted train.step:5
    .venv/bin/python bench/crash.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fresh_store(url: str | None, folder: Path) -> str:
    from sqlalchemy import create_engine, text

    from feedback import db

    if url is None:
        url = f"sqlite:///{folder / 'store.db'}"
        db.upgrade(url)
        return url
    db.upgrade(url)
    from tests.conftest import TABLES

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    engine.dispose()
    return url


def one_case(work: Path, base: str, url: str | None, seed: int, step: str | None,
             delay: float | None) -> dict:  # fmt: skip
    from tests.hardening.crashkit import Case, crash_and_recover

    folder = Path(tempfile.mkdtemp(dir=work))
    case = Case(data_dir=folder / "data", url=fresh_store(url, folder), base_model=base, seed=seed)
    started = time.monotonic()
    try:
        outcome = crash_and_recover(case, step, delay)
        outcome["result"] = "ok"
    except AssertionError as error:
        outcome = {"step": step or f"after {delay:.1f} s", "result": f"FAILED: {error}"[:400]}
        traceback.print_exc()
    outcome.update(seed=seed, seconds=round(time.monotonic() - started, 1))
    return outcome


def main(argv: list[str] | None = None) -> int:
    from tests.hardening.crashkit import STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=1, help="default 1")
    parser.add_argument("--steps", nargs="*", default=list(STEPS), help="default: every step")
    parser.add_argument("--no-random", action="store_true", help="skip the random-moment kills")
    parser.add_argument("--database-url", help="PostgreSQL database to use (emptied per case)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="tuneback-crash-") as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_tiny_model import build_tiny_model

        base = str(build_tiny_model(work / "tiny-model", seed=0).resolve())
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            kills = [(step, None) for step in args.steps]
            if not args.no_random:
                kills.append((None, random.Random(seed).uniform(1.0, 12.0)))
            for step, delay in kills:
                outcome = one_case(work, base, args.database_url, seed, step, delay)
                results.append(outcome)
                print(_row(outcome), flush=True)
    failed = [r for r in results if r["result"] != "ok"]
    print(f"\n{len(results) - len(failed)}/{len(results)} cases held", flush=True)
    return 1 if failed else 0


def _row(outcome: dict) -> str:
    if outcome["result"] != "ok":
        return f"seed {outcome['seed']} {outcome['step']:<24} {outcome['result']}"
    return (
        f"seed {outcome['seed']} {outcome['step']:<24} "
        f"{'killed' if outcome['killed'] else 'finished first'}; promoted after the kill: "
        f"{outcome['promoted_after_kill']} (champion {outcome['champion']}); "
        f"recovered to {outcome['recovered_to']} in {outcome['seconds']} s"
    )


if __name__ == "__main__":
    sys.exit(main())
