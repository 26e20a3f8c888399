"""Compile one JSON schema into an outlines-core index: run as a child process.

Some schemas are cheap to state and very expensive to compile: a string with a
``maxLength`` of 20 took 77 s on the development machine, 300 did not finish in
two minutes, and an array of 40 strings of ``maxLength`` 40 (227 bytes) wants
2.2 GB and pickles to a 537 MiB index. :meth:`feedback.structured.Grammars.index`
therefore compiles in ``python -m feedback.schema_index MEMORY CPU_SECONDS
MAX_BYTES``, which bounds its own address space and CPU time before it reads
anything, and refuses to write an answer over ``MAX_BYTES``; the parent also kills
it after a time limit and reads no more than that. So a hostile or careless schema
costs one refused request, not a stuck or swollen server.

Reads ``(vocabulary, schema_json)`` pickled on stdin (from the parent, never from
a client) and writes ``("ok", index)``, ``("error", message)`` or ``("too_large",
bytes)`` pickled on stdout. Out of memory, it exits with status 3 (Python) or
aborts (outlines-core's Rust code). Imports nothing but outlines-core, so it starts
in a fraction of a second.
"""

from __future__ import annotations

import pickle
import resource
import sys

OUT_OF_MEMORY = 3


def main(argv: list[str]) -> int:
    memory_bytes, cpu_seconds, max_bytes = (int(arg) for arg in argv)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))

    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    vocabulary, schema = pickle.load(sys.stdin.buffer)
    try:
        answer = pickle.dumps(("ok", Index(build_regex_from_schema(schema), vocabulary)))
    except (ValueError, TypeError) as error:
        answer = pickle.dumps(("error", str(error)))
    except MemoryError:
        return OUT_OF_MEMORY
    if len(answer) > max_bytes:
        answer = pickle.dumps(("too_large", len(answer)))
    sys.stdout.buffer.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
