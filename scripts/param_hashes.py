"""Hash the trained parameters of the reference runs, to prove that a refactor changes no number.

    python scripts/param_hashes.py OUT.json [--work DIR] [--skip-quick]

Trains the four configs in configs/ (one torch thread) and runs `edvae reproduce --quick`,
then writes one SHA-256 per run of the model tensors stored in its checkpoint (in state-dict
order, values and names). Run it before and after a change and compare the two files:
identical hashes mean bit-identical trained parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parameter_hash(checkpoint: Path) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every model tensor of a checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def _edvae(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edvae.cli", *args], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-quick", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edvae-hashes-"))
    hashes: dict[str, str] = {}
    for config in sorted((ROOT / "configs").glob("*.toml")):
        run = work / config.stem
        _edvae(
            "train",
            str(config),
            "--out",
            str(run),
            "--overwrite",
            "--set",
            "train.threads=1",
            "--set",
            "train.progress=false",
        )
        hashes[f"configs/{config.name}"] = parameter_hash(run / "checkpoint.pt")
    if not args.skip_quick:
        study = work / "quick"
        _edvae("reproduce", "--quick", "--out", str(study), "--overwrite")
        for checkpoint in sorted((study / "runs").glob("*/checkpoint.pt")):
            hashes[f"quick/{checkpoint.parent.name}"] = parameter_hash(checkpoint)
    args.out.write_text(json.dumps(hashes, indent=2) + "\n")
    print(f"{len(hashes)} hashes -> {args.out}")


if __name__ == "__main__":
    main()
