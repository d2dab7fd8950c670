"""Every command's answer to bad input, through the real command line: one `error:` line that
names the input and the fix, exit status 2, and no traceback."""

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.helpers import DATA_DIR, FAST, ROOT

BIN = os.path.dirname(sys.executable)  # the console scripts installed beside this Python
DATABASES = "give one such as sqlite:///lightning_logs/optuna.db, or postgresql://user:password@host/fingpt"
TRAINED = "give a .ckpt that fingpt's training wrote (lightning_logs/RUN/checkpoints/)"
CHOICES = "choose one of all, all_plus, cc_by_sa, earnings21_22, ectsum, hf_sp500, local, maec, sp500_sample"

# (id, command and arguments, the error line); {bundle}, {ckpt}, {tmp}, {port} are filled in
CASES = [
    ("train-no-such-data", "train data=nope", f"error: data=nope: there is no such config; {CHOICES}"),
    (
        "train-no-such-precision",
        "train precision=fp8",
        "error: precision=fp8: there is no such config; "
        "choose one of 16-mixed, 32-true, auto, bf16-mixed, bf16-true",
    ),
    (
        "train-key-not-in-config",
        "train lr=0.1",
        "error: Could not override 'lr'. To append to your config use +lr=0.1 "
        "(Key 'lr' is not in struct full_key: lr object_type=dict)",
    ),
    (
        "train-override-syntax",
        "train model.n_head=[",
        "error: no viable alternative at input '[' "
        "See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details",
    ),
    (
        "train-log-dir-under-a-file",
        "train paths.log_dir={tmp}/file/logs run_name=r",
        "error: {tmp}/file/logs/r: a file is in the way of a folder to write (Not a directory): "
        "give another folder",
    ),
    (
        "train-optuna-storage-url",
        "train hparams_search=optuna hydra.sweeper.storage=nowhere",
        f"error: hydra.sweeper.storage=nowhere is not a database URL: {DATABASES}",
    ),
    (
        "train-optuna-storage-driver",
        "train hparams_search=optuna hydra.sweeper.storage=postgresql://me:s3cret@db/fingpt",
        "error: hydra.sweeper.storage=postgresql://me:***@db/fingpt: its driver is not installed "
        "(No module named 'psycopg2'): pip install it (psycopg2-binary for postgresql, pymysql for "
        "mysql+pymysql), or use sqlite:///PATH",
    ),
    (
        "train-max-steps-type",
        "train trainer.max_steps=abc",
        "error: trainer: lightning.pytorch.Trainer does not take these settings "
        "('<' not supported between instances of 'str' and 'int'): check trainer.limit_val_batches=4 "
        "trainer.num_sanity_val_steps=0 trainer.log_every_n_steps=1 trainer.max_steps=abc",  # FAST's, then it
    ),
    (
        "train-batch-size-0",
        "train data.loader.batch_size=0",
        "error: data.loader.batch_size must be an integer of at least 1, got 0",
    ),
    (
        "train-resume-a-foreign-file",
        "train ckpt_path={tmp}/foreign.pt",
        "error: checkpoint {tmp}/foreign.pt has no state_dict, hyper_parameters, tokenizer: it is not a "
        "fingpt training checkpoint (lightning_logs/RUN/checkpoints/*.ckpt)",
    ),
    (
        "evaluate-no-model",
        "evaluate data=cc_by_sa",
        "error: which model? add model=PATH (a bundle, a run folder or a .ckpt)",
    ),
    (
        "evaluate-missing-model",
        "evaluate model={tmp}/nothing",
        "error: {tmp}/nothing does not exist: pass a bundle, a run folder or a .ckpt",
    ),
    (
        "evaluate-text-as-checkpoint",
        "evaluate model={tmp}/notes.ckpt",
        f"error: checkpoint {{tmp}}/notes.ckpt is not a PyTorch checkpoint (torch.save writes a zip "
        f"archive): {TRAINED}",
    ),
    (
        "evaluate-hf-folder",
        "evaluate model={tmp}/hf",
        "error: {tmp}/hf is a Hugging Face folder (for transformers), not a fingpt bundle: give the "
        "bundle it was exported from, or a .ckpt",
    ),
    (
        "evaluate-weights-of-another-model",
        "evaluate model={tmp}/misfit",
        "error: {tmp}/misfit/model.safetensors: the weights do not fit the model its config describes "
        "(missing blocks.0.attn.c_attn.bias and 52 more; unexpected layer.weight)",
    ),
    (
        "evaluate-cuda-not-here",
        "evaluate model={bundle} data=cc_by_sa device=cuda",
        "error: device cuda is not available here (torch sees no CUDA GPU): use device=cpu",
    ),
    (
        "evaluate-no-such-device",
        "evaluate model={bundle} data=cc_by_sa device=tpu",
        "error: device tpu is not one of auto, cpu, cuda, cuda:N",
    ),
    (
        "evaluate-stride-0",
        "evaluate model={bundle} data=cc_by_sa stride=0",
        "error: stride must be in [1, block_size=32], got 0",
    ),
    (
        "evaluate-batch-size-0",
        "evaluate model={bundle} data=cc_by_sa batch_size=0",
        "error: batch_size must be an integer of at least 1, got 0",
    ),
    (
        "evaluate-no-such-split",
        "evaluate model={bundle} data=cc_by_sa split=dev",
        "error: split must be one of train, validation, test (or null: every call), got 'dev'",
    ),
    (
        "evaluate-no-such-dtype",
        "evaluate model={bundle} data=cc_by_sa dtype=float8",
        "error: dtype must be one of float32, bfloat16, float16, int8, got 'float8'",
    ),
    (
        "export-missing-source",
        "export {tmp}/nothing",
        "error: {tmp}/nothing does not exist: pass a bundle, a run folder or a .ckpt",
    ),
    (
        "export-foreign-checkpoint",
        "export {tmp}/foreign.pt --out {tmp}/out",
        "error: checkpoint {tmp}/foreign.pt has no state_dict, hyper_parameters, tokenizer: it is not a "
        "fingpt training checkpoint (lightning_logs/RUN/checkpoints/*.ckpt)",
    ),
    (
        "export-out-under-a-file",
        "export {ckpt} --out {tmp}/file/bundle",
        "error: {tmp}/file: a file is in the way of a folder to write (File exists): give another folder",
    ),
    (
        "prepare-local-without-path",
        "prepare data=local",
        "error: data 'local' needs data.path: add data.path=PATH (a .txt, a folder of .txt, a .jsonl "
        "or a .parquet)",
    ),
    (
        "prepare-vocab-size-type",
        "prepare tokenizer.vocab_size=many",
        "error: tokenizer: '<' not supported between instances of 'str' and 'int': "
        "check tokenizer.vocab_size=many",
    ),
    (
        "prepare-cache-under-a-file",
        "prepare paths.cache_dir={tmp}/file/cache",
        "error: {tmp}/file/cache: a file is in the way of a folder to write (Not a directory): "
        "give another folder",
    ),
    (
        "data-no-such-corpus",
        "data download ectsum10k",
        "error: no corpus named ectsum10k: choose from ectsum, maec, earnings21_22",
    ),
    (
        "serve-foreign-checkpoint",
        "serve --model {tmp}/foreign.pt --port 0",
        "error: checkpoint {tmp}/foreign.pt has no state_dict, hyper_parameters, tokenizer: it is not a "
        "fingpt training checkpoint (lightning_logs/RUN/checkpoints/*.ckpt)",
    ),
    (
        "serve-cuda-not-here",
        "serve --model {bundle} --device cuda --port 0",
        "error: device cuda is not available here (torch sees no CUDA GPU): use device=cpu",
    ),
    (
        "serve-port-in-use",
        "serve --model {bundle} --port {port}",
        "error: cannot listen on 127.0.0.1:{port} (Address already in use): give another --host or --port",
    ),
    (
        "serve-unknown-host",
        "serve --model {bundle} --host nowhere.invalid",
        "error: cannot listen on nowhere.invalid:8000 (no such host): give another --host or --port",
    ),
]
ARGPARSE_CASES = [  # argparse's own: its usage, then one `prog: error:` line
    (
        "serve-missing-model",
        "serve --model {tmp}/nothing",
        "fingpt-serve: error: --model {tmp}/nothing does not exist: train and export one first (make demo)",
    ),
    (
        "serve-port-range",
        "serve --model {bundle} --port 99999",
        "fingpt-serve: error: --port must be in 0-65535, got 99999",
    ),
    (
        "export-no-such-dtype",
        "export {ckpt} --dtype int4",
        "fingpt-export: error: argument --dtype: invalid "
        "choice: 'int4' (choose from 'float32', 'bfloat16', 'float16', 'q8_0')",
    ),
]


def command(line: str, places: dict) -> list[str]:
    name, *args = line.format(**places).split()
    if name == "train":
        logs = [] if "paths.log_dir" in line else [f"paths.log_dir={places['tmp']}/logs"]
        return [sys.executable, "train.py", *FAST, f"paths.cache_dir={places['cache']}", *logs, *args]
    return [os.path.join(BIN, f"fingpt-{name}"), *args]


@pytest.fixture(scope="module")
def places(bundle, trained_run, cache_dir, tmp_path_factory):
    """What the cases name: a bundle, a checkpoint, and the bad files they give."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "file").write_text("a file where a folder should be")
    (tmp / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp / "foreign.pt")
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    misfit = tmp / "misfit"  # a bundle whose weights were swapped for another model's, card and all
    misfit.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (misfit / name).write_bytes((bundle / name).read_bytes())
    from safetensors.torch import save_file

    from fingpt.card import Card
    from fingpt.files import sha256

    save_file({"layer.weight": torch.zeros(2, 2)}, misfit / "model.safetensors")
    card = Card.load(bundle / "card.json")
    card.sha256 = {
        name: sha256(misfit / name) for name in ("config.json", "tokenizer.json", "model.safetensors")
    }
    card.save(misfit / "card.json")
    return {
        "tmp": tmp,
        "bundle": bundle,
        "ckpt": trained_run / "checkpoints" / "best.ckpt",
        "cache": cache_dir,
    }


@pytest.fixture(scope="module")
def answers(places):
    """Every case's process, run a few at a time (most of each is Python importing torch)."""
    busy = socket.create_server(("127.0.0.1", 0))  # a port in use for serve-port-in-use
    places = places | {"port": busy.getsockname()[1]}
    env = {**os.environ, "FINGPT_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}

    def run(case):
        case_id, line, _ = case
        cwd = places["tmp"] if case_id.startswith("prepare") else ROOT  # prepare's default cache: ./data
        return subprocess.run(
            command(line, places), cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )

    with busy, ThreadPoolExecutor(3) as pool:
        done = dict(
            zip([c[0] for c in CASES + ARGPARSE_CASES], pool.map(run, CASES + ARGPARSE_CASES), strict=True)
        )
    return done, places


@pytest.mark.parametrize(("case_id", "line", "error"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_error_line_and_exit_2(answers, case_id, line, error):
    if "cuda" in line and torch.cuda.is_available():
        pytest.skip("torch sees a CUDA GPU here")
    done, places = answers
    proc = done[case_id]
    errors = [text for text in proc.stderr.splitlines() if "error:" in text.lower()]
    assert (proc.returncode, errors) == (2, [error.format(**places)]), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("case_id", "line", "error"), ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_a_bad_flag_ends_in_argparses_usage_and_one_error_line(answers, case_id, line, error):
    done, places = answers
    proc = done[case_id]
    assert proc.returncode == 2 and proc.stderr.splitlines()[0].startswith("usage: ")
    assert proc.stderr.strip().splitlines()[-1] == error.format(**places)
