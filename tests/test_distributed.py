"""Two CPU processes (gloo): HCR statistics and metrics are reduced across processes, and
`dmrnet train --devices 2 --strategy ddp` runs end to end."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from dmrnet.config import HCRConfig
from dmrnet.methods.hcr import HardCombinationRegularizer
from dmrnet.modalities import ModalitySet


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hcr_worker(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        hcr = HardCombinationRegularizer(
            HCRConfig(rule="unimodal-max", warmup_epochs=1), ModalitySet(("a", "b")), True
        )
        hcr.start_epoch(0)
        # Rank 0 alone would pick `a`; together `b` has the larger mean variance (0.8 vs 0.55).
        variance = torch.tensor([1.0, 0.6]) if rank == 0 else torch.tensor([0.1, 1.0])
        hcr.observe(torch.tensor([0, 1]), torch.zeros(2), variance)
        logs = hcr.end_epoch(0)
        results[rank] = (hcr.hard_names(), logs["hcr/variance/a"])
    finally:
        dist.destroy_process_group()


def test_hcr_statistics_are_reduced_across_processes():
    results = mp.Manager().dict()
    mp.spawn(hcr_worker, args=(free_port(), results), nprocs=2, join=True)
    assert results[0] == results[1]
    names, variance_a = results[0]
    assert names == ["b"] and abs(variance_a - 0.55) < 1e-6


def test_ddp_training_with_two_cpu_processes(make_config, tmp_path):
    config = make_config("dmrnet")
    config["train"]["epochs"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmrnet.cli",
            "train",
            str(path),
            "--run-dir",
            str(run_dir),
            "--devices",
            "2",
            "--strategy",
            "ddp",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    report = json.loads((Path(run_dir) / "results.json").read_text())
    assert len(report["combinations"]) == 7
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_torchrun_multi_node_recipe_with_two_nodes_on_one_machine(make_config, tmp_path):
    """docs/configuration.md's torchrun recipe as two 'nodes' of one CPU process each on this
    machine (gloo): --num-nodes 2 --devices 1, Lightning reads the ranks from torchrun."""
    config = make_config("dmrnet")
    config["train"]["epochs"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def node(rank: int) -> subprocess.Popen:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        torchrun += ["--node-rank", str(rank), "--nproc-per-node", "1"]
        torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        dmrnet = ["-m", "dmrnet", "train", str(path), "--run-dir", str(run_dir)]
        dmrnet += ["--devices", "1", "--num-nodes", "2", "--strategy", "ddp"]
        return subprocess.Popen(
            torchrun + dmrnet, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

    nodes = [node(0), node(1)]
    outputs = [process.communicate(timeout=300)[0] for process in nodes]
    assert [process.returncode for process in nodes] == [0, 0], outputs[0][-3000:]
    assert "Starting with 2 processes" in outputs[0]
    assert len(json.loads((run_dir / "results.json").read_text())["combinations"]) == 7
