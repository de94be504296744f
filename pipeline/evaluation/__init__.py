"""Evaluation with the SAN benchmark protocol: confusion matrices and metrics (`metrics`), and
scoring a labeling output against ground truth on Ray, with reports (`scoring`)."""
