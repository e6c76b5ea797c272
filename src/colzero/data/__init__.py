"""Training data: readers, sources, sampling, collation, and the data tools (pairs, mining, teacher scores)."""
