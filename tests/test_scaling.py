"""Training on several nodes, as README "Scaling out" runs it: two CPU processes over gloo play
two nodes of one device each, started by Lightning's own launcher or by torchrun."""

import json
import subprocess

from serving.testing import free_port
from tests.callbacks import read_records
from tests.helpers import ROOT, cli, run_cli

STEPS = ["trainer.max_steps=4", "trainer.val_check_interval=4", "run_name=scaled", "trainer=ddp"]


def train_on_two_nodes(launcher: str, tmp_path, cache_dir) -> dict:
    """Start node 1 then node 0 of `trainer.num_nodes=2 trainer.devices=1`; node 0's result."""
    port = free_port()
    recorder = [
        "+callbacks.recorder._target_=tests.callbacks.BatchRecorder",
        f"+callbacks.recorder.path={tmp_path}/batches",
    ]
    cmd, env = cli([*STEPS, "trainer.devices=1", "trainer.num_nodes=2", *recorder], tmp_path, cache_dir)
    nodes = []
    for node_rank in (1, 0):
        if launcher == "torchrun":
            rendezvous = ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}"]
            rendezvous += ["--master_addr=127.0.0.1", f"--master_port={port}"]
            node_cmd, node_env = [cmd[0], "-m", "torch.distributed.run", *rendezvous, *cmd[1:]], env
        else:  # Lightning's launcher reads the node's rank and the master's address from the environment
            node_cmd = cmd
            node_env = {
                **env,
                "NODE_RANK": str(node_rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        nodes.append(
            subprocess.Popen(
                node_cmd, cwd=ROOT, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode == 0, output.decode()[-5000:]
    return json.loads((tmp_path / "scaled" / "result.json").read_text())


def test_two_nodes_train_as_two_devices_of_one_node(tmp_path, cache_dir):
    run_cli([*STEPS, "trainer.devices=2"], tmp_path / "one_node", cache_dir)
    expected = json.loads((tmp_path / "one_node" / "scaled" / "result.json").read_text())

    for launcher in ("lightning", "torchrun"):
        result = train_on_two_nodes(launcher, tmp_path / launcher, cache_dir)
        # the same global batch, split over global ranks the same way: the same model
        assert result["steps"] == expected["steps"] == 4
        assert result["val_bpb"] == expected["val_bpb"], launcher
        rank0, rank1 = (read_records(tmp_path / launcher / "batches", rank) for rank in (0, 1))
        assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == [0, 1, 2, 3]
        assert not {tuple(w) for r in rank0 for w in r["batch"]} & {
            tuple(w) for r in rank1 for w in r["batch"]
        }
