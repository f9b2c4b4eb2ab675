"""Training data: the in-memory Dataset, the XC/svmlight, CSV/TSV and streaming readers, text featurising, seeded synthetic data."""
