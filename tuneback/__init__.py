"""The ``tuneback`` command: the composition root that wires feedback, retrain and serve."""
