"""LightningDataModules: question batches (evaluation, tuning) and cached features (probing)."""
