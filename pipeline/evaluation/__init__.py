"""Evaluation with the SAN benchmark protocol: confusion matrices and metrics (`metrics`), scoring
a labeling output against ground truth on Ray, with reports (`scoring`), and the benchmarks'
folder layouts, labeled by the labeling job (`benchmarks`)."""
