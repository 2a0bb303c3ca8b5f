"""L0: pure maths (torch, numpy, scipy; no I/O, no config, nothing else of raysimnpo): log-probabilities,
the unlearning objectives, Pareto fronts and the benchmark metrics (`metrics/`)."""
