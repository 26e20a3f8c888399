"""Trained adapters, in one place for every package that handles them.

- :mod:`feedback.adapters.files`: the folder format, written and verified (no
  torch, no database);
- :mod:`feedback.adapters.store`: data functions over the adapter-version rows
  and their promotion history (keyword-only, explicit session, never commit);
- :mod:`feedback.adapters.registry`: :class:`~feedback.adapters.registry.Registry`,
  which ties the two together: add, verify, promote, roll back, recover.

The retrain cycle, the serving process, the command line and the dashboard call
these directly; none of them needs the others to promote or verify an adapter.
"""
