"""Backends behind one interface (`Answerer`): an in-process transformers model, a served model, CLIP."""
