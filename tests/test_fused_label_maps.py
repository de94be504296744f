"""The fused label-map kernel a GPU runs (`san_core.fused_label_maps`), here under Triton's
interpreter: the same labels and scores as the full score maps' argmax and top two; and the same
kernel compiled for real GPUs (PTX, then machine code by the ptxas Triton ships), no GPU needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

import san_core.fused_label_maps as fused
from san_core.postprocess import batched_label_maps, label_batch, semantic_scores

REPO = Path(__file__).resolve().parents[1]
# Two blocks down (32 rows and 8) and two across (64 columns and 6): full and cut-short blocks.
BATCH, QUERIES, PADDED, VALID, OUTPUT = 2, 20, (96, 128), (90, 121), (40, 70)


def _logits(classes: int, peak: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(classes)
    class_logits = torch.randn(BATCH, QUERIES, classes + 1, generator=generator) * peak
    mask_logits = torch.randn(BATCH, QUERIES, 6, 8, generator=generator) * 3
    return class_logits, mask_logits


def _assert_top_two_of_full_scores(labels, class_logits, mask_logits) -> None:
    for image in range(BATCH):
        scores = semantic_scores(class_logits[image], mask_logits[image], PADDED, VALID, OUTPUT)
        ranked = scores.topk(2, dim=0).values
        assert torch.allclose(labels.scores[image], ranked[0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(labels.runner_up[image], ranked[1], rtol=1e-5, atol=1e-6)
        assert torch.allclose(labels.totals[image], scores.sum(dim=0), rtol=1e-5, atol=1e-6)
        # the argmax, up to float ties between classes
        disagree = labels.labels[image] != scores.argmax(dim=0)
        assert disagree.float().mean() < 1e-3
        chosen = scores.gather(0, labels.labels[image][None])[0]
        assert ((chosen - ranked[0])[disagree].abs() <= 1e-6).all()


def test_the_kernel_runs_in_the_interpreter_here():
    assert isinstance(fused._anchor_top_two, InterpretedFunction)


# Compiles the kernel as `fused_label_maps` launches it for one GPU, in a process of its own: the
# suite runs Triton in its interpreter, decided at import (conftest). Prints the PTX, then
# ptxas's report on the machine code (registers, spills), Triton's own ptxas doing both.
COMPILE = """
import re, subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import san_core.fused_label_maps as fused

capability, precision = int(sys.argv[1]), sys.argv[2]
constants = {"TAPS": 3, "BLOCK_ROWS": fused.BLOCK_ROWS, "BLOCK_COLS": fused.BLOCK_COLS,
             "QUERY_CHUNK": fused.QUERY_CHUNK, "K": fused.KERNEL_ANCHORS, "PRECISION": precision}
kernel = fused._anchor_top_two
pointers = {"labels_ptr": "*i64", "row_first_ptr": "*i32", "anchors_ptr": "*i32"}
signature = {
    name: "constexpr" if name in constants else pointers.get(name, "*fp32" if name.endswith("_ptr") else "i32")
    for name in kernel.arg_names
}
constexprs = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", capability, 32))
assert compiled.asm["cubin"], "no machine code"
ptx = compiled.asm["ptx"]
architecture = re.search(r"^[.]target (\\w+)", ptx, re.MULTILINE).group(1)
report = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={architecture}", "-", "-o", "/dev/null"],
                        input=ptx, capture_output=True, text=True, check=True).stderr
print(ptx)
print("PTXAS REPORT", report)
"""


@pytest.mark.parametrize(
    ("capability", "precision", "tensor_core_op"),
    [(90, "tf32x3", "wgmma.mma_async.sync.aligned"), (80, "tf32x3", "mma.sync.aligned"), (75, "ieee", None)],
)
def test_the_kernel_compiles_for_hopper_ampere_and_turing_without_spilling(capability, precision, tensor_core_op):
    """The interpreter accepts what a GPU compiler may not (tl.dot's shapes, types): compile for an
    H100/H200, an A100 and a T4, multiply on the tensor cores where there are TF32 ones, and keep
    every value in registers (a spill would go to slow local memory)."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE, str(capability), precision],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ptx, report = done.stdout.split("PTXAS REPORT")
    if tensor_core_op:
        assert tensor_core_op in ptx
    else:
        assert "mma" not in ptx
    assert "0 bytes spill stores, 0 bytes spill loads" in report, report


@pytest.mark.parametrize(("classes", "peak"), [(150, 5.0), (847, 0.01)])
def test_fused_label_maps_are_the_argmax_and_top_two_of_the_score_maps(classes, peak):
    """Peaked (150 classes) and flat (847: the anchors leave blocks undecided, scored again)
    probabilities."""
    class_logits, mask_logits = _logits(classes, peak)
    labels = fused.fused_label_maps(class_logits, mask_logits, PADDED, VALID, OUTPUT)
    assert labels.labels.shape == labels.scores.shape == (BATCH, *OUTPUT) and labels.labels.dtype == torch.int64
    _assert_top_two_of_full_scores(labels, class_logits, mask_logits)
    batched = batched_label_maps(class_logits, mask_logits, PADDED, VALID, OUTPUT)
    assert (labels.labels != batched.labels).float().mean() < 1e-3


def test_blocks_whose_anchors_cannot_decide_are_scored_again(monkeypatch):
    """Two anchors for 40 classes: nearly every block has classes outside them that may win,
    which the scoring after the kernel must find."""
    monkeypatch.setattr(fused, "KERNEL_ANCHORS", 2)
    class_logits, mask_logits = _logits(40, 0.5)
    labels = fused.fused_label_maps(class_logits, mask_logits, PADDED, VALID, OUTPUT)
    _assert_top_two_of_full_scores(labels, class_logits, mask_logits)


def test_label_batch_uses_pytorch_off_a_gpu():
    class_logits, mask_logits = _logits(150, 5.0)
    on_cpu = label_batch(class_logits, mask_logits, PADDED, VALID, OUTPUT)
    batched = batched_label_maps(class_logits, mask_logits, PADDED, VALID, OUTPUT)
    assert torch.equal(on_cpu.labels, batched.labels) and torch.equal(on_cpu.scores, batched.scores)
