"""predictions and what is computed from them: functional core, metric classes, statistics."""
