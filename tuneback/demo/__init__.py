"""``tuneback demo``: a day of production on the embedded defaults, end to end.

The service starts, chat traffic arrives through the OpenAI-compatible
endpoint, customers vote from the widget, agents correct what was voted down,
a retrain cycle trains, gates and promotes an adapter, the server hot-swaps it,
and the same held-out questions are answered before and after. Everything goes
through the real pieces: HTTP to a real ``tuneback serve`` process, the real
retrain cycle (``retrain.cycle.run_cycle``, as ``tuneback retrain``) and the
registry. Scenarios and their scoring come from :mod:`retrain.scenarios`.
"""

from tuneback.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
