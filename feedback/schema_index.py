"""Compile one JSON schema into an outlines-core index: run as a child process.

Some schemas are cheap to state and very expensive to compile: a string with a
``maxLength`` of 20 took 77 s on the development machine, 300 did not finish in
two minutes. :meth:`feedback.structured.Grammars.index` therefore compiles in
``python -m feedback.schema_index``, which it kills after a time limit, so a hostile
or careless schema costs one refused request, not a stuck server.

Reads ``(vocabulary, schema_json)`` pickled on stdin (from the parent, never from
a client) and writes ``("ok", index)`` or ``("error", message)`` pickled on stdout.
Imports nothing but outlines-core, so it starts in a fraction of a second.
"""

from __future__ import annotations

import pickle
import sys


def main() -> int:
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    vocabulary, schema = pickle.load(sys.stdin.buffer)
    try:
        result = ("ok", Index(build_regex_from_schema(schema), vocabulary))
    except (ValueError, TypeError) as error:
        result = ("error", str(error))
    pickle.dump(result, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
