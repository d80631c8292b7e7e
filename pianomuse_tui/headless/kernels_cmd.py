"""Headless commands for the kernels area: `pianomuse-tui --headless build-kernels`."""
from __future__ import annotations

import time
from typing import Optional

import typer

from .console import console, fail


def build_kernels(
    arch: Optional[str] = typer.Option(
        None, "--arch", help='Build for these compute capabilities instead of the GPU present, e.g. "8.0;9.0".'
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the compiler's commands and output."),
) -> None:
    """Compile the WKV7 CUDA kernels ahead of time (cached), then check them against the reference."""
    import torch  # torch loads only for this command

    from engine.kernels import build

    archs = [a.strip() for a in arch.replace(",", ";").split(";") if a.strip()] if arch else None
    if archs and any(not a.replace(".", "").isdigit() or "." not in a for a in archs):
        fail(f'--arch takes compute capabilities like "8.0;9.0", not {arch!r}.')
    targets = archs or build.target_archs()
    console.print(f"WKV7 kernels: building for sm {', '.join(targets)} into {build.build_dir(targets)}")
    start = time.perf_counter()
    try:
        build.build(verbose=verbose, archs=archs)
    except build.BuildError as exc:
        fail(f"{exc.reason} The engine will use the PyTorch WKV7 path (much slower on GPU).")
    console.print(f"built and loaded in {time.perf_counter() - start:.1f} s")
    if not torch.cuda.is_available():
        console.print("no GPU here: the kernels were not run (they run on the GPU they were built for).")
        return
    from engine.kernels.wkv7 import cuda as wkv7_cuda
    from engine.kernels.wkv7.reference import wkv7_reference

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 50, 2, 64)
    xs = [torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16) for _ in range(4)]
    kappa = torch.nn.functional.normalize(torch.randn(*shape, device="cuda", generator=g), dim=-1)
    xs += [(-kappa).to(torch.bfloat16), (kappa * 0.5).to(torch.bfloat16)]
    with torch.no_grad():
        y, _ = wkv7_cuda.wkv7_cuda(*xs)
        y_ref, _ = wkv7_reference(*(x.double() for x in xs))
    err = ((y.double() - y_ref).norm() / y_ref.norm()).item()
    if not err < 1e-2:
        fail(f"the built kernels disagree with the reference (relative error {err:.1e}); rebuild with --verbose "
             "and report the log.")
    console.print(f"self-check against the reference: relative error {err:.1e} (bf16 expectation < 1e-2): ok")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("build-kernels")(build_kernels)
