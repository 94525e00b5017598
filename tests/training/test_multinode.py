"""Training on two machines: two ``torchrun`` nodes of one process each, on the loopback interface (gloo on CPU),
end with the weights of one process trained on the same global batch.

Accelerate gives process r of N the batches r, r + N, ... of the shared sampler, and DDP averages the processes'
gradients, so 2 nodes × batch B step on the same points with the same mean gradient as one process with batch 2B.
The model (flatten → GLVQ on bundled MNIST) has no batch statistics, so the two agree up to float rounding of the
gradient sum.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

import robustproto
from robustproto.checkpoint import read_jsonl

BATCH = 8  # per process
ARGS = ["-m", "robustproto", "train", "--backbone", "flatten", "--head", "glvq", "--max-train-samples", "64",
        "--max-test-samples", "16", "--epochs", "1", "--lr", "0.01"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_agree_with_one_process_on_the_same_global_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *ARGS, "--batch-size", str(BATCH), "--output", str(tmp_path / "nodes")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for rank in (0, 1)]
    single = subprocess.run([sys.executable, *ARGS, "--batch-size", str(2 * BATCH), "--output", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    outputs = [node.communicate(timeout=120) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    assert "2 process(es)" in outputs[0][0]

    (record,) = read_jsonl(tmp_path / "nodes" / "metrics.jsonl")
    assert len(record["weights_sha256"]) == 2 and len(set(record["weights_sha256"])) == 1  # the nodes agree
    two, one = robustproto.load(tmp_path / "nodes").state_dict(), robustproto.load(tmp_path / "one").state_dict()
    assert two.keys() == one.keys()
    for name in two:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
