import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fingpt import export as export_module
from fingpt.card import Card
from fingpt.checkpoint import BUNDLE_FILES, load_model
from fingpt.devices import native_bfloat16
from fingpt.export import export, main
from fingpt.files import sha256
from tests.helpers import ROOT, assert_transformers_matches, permissions, umask_permissions


def test_training_exported_its_best_checkpoint_and_pointed_latest_at_it(trained_run):
    models = trained_run.parent / "models"
    assert (models / "latest").is_symlink() and (models / "latest").resolve() == (
        models / trained_run.name
    ).resolve()
    card = json.loads((models / "latest" / "card.json").read_text())
    assert card["steps"] in (10, 12) and card["val_bpb"] > 0
    assert card["tokens_seen"] == card["steps"] * 8 * 32  # batch 8 x block 32 per step
    assert card["data"]["name"] == "cc_by_sa" and len(card["data"]["fingerprint"]) == 16
    assert card["training_config"]["model"]["n_embd"] == 96
    # names and fingerprints, nothing of the filesystem that trained it
    assert card["checkpoint"] == "best.ckpt" and "paths" not in card["training_config"]
    assert card["training_config"]["data"]["sources"]["maec"]["path"] == "calls.parquet"
    assert str(trained_run.parent) not in (models / "latest" / "card.json").read_text()


def test_a_bundle_gives_the_checkpoints_logits(trained_run, bundle):
    from_checkpoint, from_bundle = load_model(trained_run), load_model(bundle)
    idx = torch.randint(0, from_checkpoint.model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(from_checkpoint.model(idx)[0], from_bundle.model(idx)[0])
    assert from_bundle.tokenizer.to_json() == from_checkpoint.tokenizer.to_json()
    names = set(load_file(bundle / "model.safetensors"))
    assert "wte.weight" in names and "lm_head.weight" not in names  # tied: stored once
    assert not any(n.startswith("model.") for n in names)  # no LightningModule prefix


def test_the_demos_recipe_trains_compiled_and_exports_a_bundle_with_plain_names(demo_training):
    """What make demo trains (experiment=cpu_demo: torch.compile, bf16-mixed, Muon, WSD), for 20 steps."""
    cfg, printed = demo_training
    assert (cfg.compile, cfg.trainer.precision, cfg.model.mlp) == (True, "auto", "relu2")
    assert (cfg.optimizer._target_, cfg.scheduler._target_) == (
        "fingpt.optim.muon",
        "fingpt.optim.WarmupStableDecay",
    )
    result = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    bundle = Path(result["bundle"])
    names = set(load_file(bundle / "model.safetensors"))
    assert "wte.weight" in names and not any(n.startswith(("model.", "_orig_mod.")) for n in names)
    from_checkpoint, from_bundle = load_model(cfg.paths.output_dir), load_model(bundle)
    assert from_bundle.card.steps == 20 and from_bundle.model.config.pos_emb == "rope"
    # the card's val_bpb is the one train printed and wrote: the best checkpoint on all of validation
    assert from_bundle.card.val_bpb == result["val_bpb"] != from_bundle.card.val_bpb_during_fit  # 8 windows
    assert f"val/bpb {from_bundle.card.val_bpb:.4f} at step 20" in printed
    native = native_bfloat16("cpu")  # bf16-mixed where this CPU has bfloat16, else float32
    assert from_bundle.card.training_config["trainer"]["precision"] == ("bf16-mixed" if native else "32-true")
    idx = torch.randint(0, from_bundle.model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(from_checkpoint.model(idx)[0], from_bundle.model(idx)[0])
    # its layout (rotary, RMSNorm, ReLU², qk_norm) goes to transformers as Apertus
    assert_transformers_matches(bundle, Path(result["hf"]), "ApertusForCausalLM")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_bundles(trained_run, tmp_path, dtype):
    half = load_model(export(trained_run, tmp_path / dtype, dtype))
    full = load_model(trained_run)
    assert half.model.wte.weight.dtype == getattr(torch, dtype)
    idx = torch.randint(0, full.model.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(half.model(idx)[0].float(), full.model(idx)[0], atol=0.1, rtol=0.05)
    assert (tmp_path / dtype / "model.safetensors").stat().st_size < 0.6 * (
        4 * sum(p.numel() for p in full.model.parameters())
    )


@pytest.mark.parametrize("victim", ["model.safetensors", "tokenizer.json", "config.json"])
def test_a_bundle_with_a_missing_or_corrupt_file_is_refused_by_name(bundle, tmp_path, victim):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(bundle), str(broken)], check=True)
    data = bytearray((broken / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / victim).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{victim} is corrupt"):
        load_model(broken)
    (broken / victim).unlink()
    with pytest.raises(ValueError, match=f"missing {victim}"):
        load_model(broken)


def test_a_crash_while_exporting_leaves_nothing(trained_run, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        export(trained_run, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_exports_and_reports_bad_input(trained_run, tmp_path, capsys):
    main([str(trained_run), "--out", str(tmp_path / "cli"), "--no-latest"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "x")])
    assert "nothing.ckpt does not exist" in capsys.readouterr().err
    main([str(trained_run), "--no-latest"])  # by default into FINGPT_MODELS_DIR, as train.py
    assert (Path(os.environ["FINGPT_MODELS_DIR"]) / trained_run.name / "card.json").is_file()


def test_export_never_replaces_a_folder_that_is_not_a_bundle(trained_run, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a bundle"):
        export(trained_run, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    old = export(trained_run, tmp_path / "bundle")
    (old / "stale.txt").write_text("only in the old bundle")
    new = export(trained_run, tmp_path / "bundle", dtype="bfloat16")  # an old bundle is replaced
    assert sorted(p.name for p in new.iterdir()) == sorted(
        [*BUNDLE_FILES, "tokenizer_config.json"]
    )  # no stale.txt
    assert load_model(new).card.dtype == "bfloat16"


def test_the_card_takes_the_runs_final_figure_on_all_of_validation(trained_run, bundle):
    """train prints and writes to result.json the best checkpoint's val/bpb on every validation
    window; the card says the same, not the score on fit's sampled windows."""
    result = json.loads((trained_run / "result.json").read_text())
    card = Card.load(bundle / "card.json")
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    during_fit = [s["best_model_score"] for s in best["callbacks"].values() if "best_model_score" in s]
    assert card.val_bpb == result["val_bpb"] == load_model(trained_run).card.val_bpb
    assert card.val_bpb_during_fit == pytest.approx(float(during_fit[0]))
    assert card.checkpoint == "best.ckpt" and Path(result["best_checkpoint"]).name == "best.ckpt"


def test_a_checkpoint_takes_result_json_only_when_that_scored_it(trained_run, tmp_path):
    """A .ckpt alone, or one that result.json does not name or predates, keeps the score of fit."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes((trained_run / "checkpoints" / "best.ckpt").read_bytes())
    during_fit = load_model(best).card.val_bpb_during_fit
    assert during_fit > 0 and load_model(best).card.val_bpb == during_fit  # no result.json yet
    result = {"val_bpb": 1.2345, "best_checkpoint": "/elsewhere/checkpoints/best.ckpt"}
    (run / "result.json").write_text(json.dumps(result))
    assert load_model(run).card.val_bpb == load_model(best).card.val_bpb == 1.2345
    (run / "result.json").write_text(json.dumps(result | {"best_checkpoint": ""}))  # the final weights
    assert load_model(run).card.val_bpb == during_fit
    (run / "result.json").write_text(json.dumps(result))
    os.utime(run / "result.json", (best.stat().st_mtime - 60,) * 2)  # a resumed run wrote best.ckpt since
    assert load_model(run).card.val_bpb == during_fit


def test_loading_a_bundle_imports_neither_lightning_nor_hydra(bundle):
    code = (
        "import sys\n"
        "from fingpt.checkpoint import load_model\n"
        "from fingpt.generation import generate\n"
        f"load_model({str(bundle)!r})\n"
        "stack = ('lightning', 'pytorch_lightning', 'hydra')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in stack))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_bundle_is_readable_as_any_plain_file_is(bundle):
    # not the owner-only 0600 that safetensors and tempfile give: a server may run as another user
    assert permissions(bundle) == umask_permissions(bundle)


def test_a_bundle_exported_before_the_layout_options_loads_as_the_gpt2_layout(bundle, tmp_path):
    """config.json of earlier bundles has `activation` and none of pos_emb, norm, mlp, ...: the
    model they describe is the GPT-2 layout, with the same logits."""
    old = tmp_path / "old"
    subprocess.run(["cp", "-r", str(bundle), str(old)], check=True)
    config = json.loads((old / "config.json").read_text())
    new_fields = ("mlp", "pos_emb", "rope_base", "norm", "qk_norm", "zero_init_proj", "logit_softcap")
    config = {k: v for k, v in config.items() if k not in new_fields} | {"activation": "gelu"}
    (old / "config.json").write_text(json.dumps(config))
    card = json.loads((old / "card.json").read_text())
    card["sha256"]["config.json"] = sha256(old / "config.json")
    (old / "card.json").write_text(json.dumps(card))
    loaded, current = load_model(old), load_model(bundle)
    assert (loaded.model.config.pos_emb, loaded.model.config.mlp) == ("learned", "gelu")
    idx = torch.randint(0, loaded.model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], current.model(idx)[0])
