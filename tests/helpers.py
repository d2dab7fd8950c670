"""What tests import: the checkout's folders, its real config, the training command line, file modes."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Real calls committed with the tests (MAEC and Earnings-21/22, CC BY-SA 4.0; corpus/NOTICE.md),
# laid out as a data folder: what every test reads.
DATA_DIR = ROOT / "tests" / "corpus"
# The full corpora (make data; the Makefile points FINGPT_DATA_DIR at them): read only by the
# tests marked @pytest.mark.corpora(NAME, ...), skipped where those corpora are not there.
CORPORA_DIR = Path(os.environ.get("FINGPT_DATA_DIR", ROOT / "data"))
KEY = "s3same"  # the API key of the page tests' keyed server


def compose(config_name: str, overrides: list[str]):
    """The project's real Hydra config as the command line composes it, on the sample (a later
    paths.data_dir= in `overrides` wins)."""
    from fingpt.config import compose as compose_config

    return compose_config(config_name, [f"paths.data_dir={DATA_DIR}", *overrides])


FAST = [  # a tiny, quick run: the settings every training test starts from
    "model=tiny",
    "model.block_size=32",
    "data.loader.batch_size=8",
    "data.loader.val_batch_size=32",
    "trainer.limit_val_batches=4",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
    "trainer.log_every_n_steps=1",
    "sample.tokens=8",
    "scheduler.warmup_steps=2",
]


def train_config(tmp_path, cache_dir, overrides: list[str]):
    cfg = compose(
        "train",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.log_dir={tmp_path}",
            f"paths.models_dir={tmp_path}/models",
            f"+paths.run_dir={tmp_path}/run",
            *FAST,
            *overrides,
        ],
    )
    cfg.paths.output_dir = cfg.paths.run_dir
    return cfg


def cli(args: list[str], tmp_path, cache_dir) -> tuple[list[str], dict]:
    """The command and environment of `python train.py ARGS` with the fast settings and a private
    log dir, to run in ROOT."""
    env = {**os.environ, "FINGPT_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "train.py",
        *args,
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={tmp_path}",
    ]
    return cmd, env


def run_cli(args: list[str], tmp_path, cache_dir, check: bool = True, timeout: int = 300):
    """`python train.py ARGS` in a fresh process, with the fast settings and a private log dir."""
    cmd, env = cli(args, tmp_path, cache_dir)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return proc


def permissions(folder: Path) -> dict[str, int]:
    """The permission bits of a folder and of everything in it, by path relative to it."""
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def umask_permissions(folder: Path) -> dict[str, int]:
    """What `permissions` gives for a folder written with plain open() and mkdir()."""
    mask = os.umask(0)
    os.umask(mask)
    return {name: (0o777 if (folder / name).is_dir() else 0o666) & ~mask for name in permissions(folder)}


def assert_transformers_matches(bundle: Path, hf_folder: Path, architecture: str) -> None:
    """transformers loads `hf_folder` (offline, no custom code) as `architecture`, and gives the
    bundle's logits within 1e-4 in float32 and its greedy tokens."""
    import torch
    import transformers

    from fingpt.checkpoint import load_model
    from fingpt.generation import SamplingParams, generate

    ours = load_model(bundle)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    assert type(hf_model).__name__ == architecture
    idx = torch.randint(0, ours.model.config.vocab_size, (2, ours.model.config.block_size))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, ours.model(idx)[0], atol=1e-4, rtol=0)
    prompt = ours.tokenizer.encode("Operator:")
    new = ours.model.config.block_size - len(prompt)  # GPT-2's positions end at its context
    greedy = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    (completion,) = generate(ours.model, ours.tokenizer, [prompt], greedy)
    hf_ids = hf_model.generate(
        torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
    )
    assert new >= 28 and hf_ids[0, len(prompt) :].tolist() == completion.tokens
