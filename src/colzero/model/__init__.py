"""The models: ColBERT (multi-vector) and DenseModel (single-vector), their settings, loading and saving."""
