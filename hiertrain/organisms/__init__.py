"""Calibration organisms: small trained Qwen2.5-VL models whose taxonomy knowledge is planted,
so hiertrain can be checked against known ground truth (see hiertrain.organisms.build)."""
