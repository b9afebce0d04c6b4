"""LightningModules: frozen evaluators, feature extractor, linear probes, LoRA tuner."""
