"""raysimnpo: distributed sweeps for LLM unlearning (SimNPO and its baselines) on Ray."""

__version__ = "0.1.0"
