"""Retaining freed host memory: large buffers freed by one step are reused by the next."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hiertrain.cli import malloc

# A step that allocates and frees three 40 MB host buffers (a batched step's pixel_values is
# 38 MB for 8 images of 448 px): all above glibc's largest dynamic mmap threshold, 32 MiB, so
# glibc as is maps each afresh (3 x 9766 pages a step). 8 steps to settle, then the page faults
# of 4 more.
PROBE = """
import resource
from hiertrain.cli.malloc import retain_freed_memory
print(retain_freed_memory())
import torch
torch.set_num_threads(1)
def step():
    a = torch.ones(10_000_000)
    b = a * 2
    return float((b + 1)[0])
for _ in range(8):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str) -> tuple[str, int]:
    env = {**os.environ, "HIERTRAIN_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.slow
def test_large_freed_buffers_are_reused_instead_of_faulted_again():
    applied, retained = _probe("")
    untouched, default = _probe("default")
    assert (applied, untouched) == ("True", "False")
    assert default > 100_000  # glibc as is: 4 steps x 3 buffers x 9766 pages
    assert retained * 5 < default  # kept: reused (observed 0, or one buffer of one step)


def test_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("HIERTRAIN_MALLOC", "default")
    assert malloc.retain_freed_memory() is False
