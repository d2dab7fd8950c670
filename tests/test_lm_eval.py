"""evals/fingpt_calls through lm-evaluation-harness's own command line, offline, both ways a
user runs it: on the Hugging Face export, and against fingpt-serve's completions API."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fingpt.errors import DataError
from fingpt.evaluate import evaluate, score
from fingpt.export import export_hf
from serving.testing import serve
from tests.helpers import ROOT, compose

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def calls(sample_calls, tmp_path_factory):
    """Three real calls as a .jsonl file."""
    path = tmp_path_factory.mktemp("calls") / "calls.jsonl"
    path.write_text("".join(json.dumps({"content": text}) + "\n" for text in sample_calls[:3]))
    return path


@pytest.fixture(scope="module")
def fingpt_bpb(bundle, calls):
    """fingpt-evaluate's bits per byte with non-overlapping windows (stride = context)."""
    cfg = compose("evaluate", [f"model_path={bundle}", f"data.path={calls}", "stride=32"])
    return evaluate(cfg).bpb


def start_lm_eval(model: str, model_args: str, calls, out, *extra: str) -> subprocess.Popen:
    cmd = [
        *(sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args),
        *("--include_path", "evals", "--tasks", "fingpt_calls", "--batch_size", "8"),
        *("--metadata", json.dumps({"path": str(calls)}), "--output_path", str(out)),
        *extra,
    ]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scores_of(process: subprocess.Popen, out) -> dict:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-4000:]
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text())["results"]["fingpt_calls"]


@pytest.fixture(scope="module")
def lm_eval_runs(bundle, calls, tmp_path_factory):
    """lm-eval run both ways a user runs it, at once (most of each is importing lm-eval): on the
    Hugging Face export, and against fingpt-serve with the bundle's own tokenizer folder cutting
    the windows. Their scores, and the server's metrics after."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    folder = export_hf(bundle, tmp / "hf")
    with serve(bundle) as server:
        served = (
            f"base_url={server.url}/v1/completions,tokenizer={bundle},"
            "tokenizer_backend=huggingface,max_length=32"
        )
        runs = {
            "hf": start_lm_eval(
                "hf", f"pretrained={folder},dtype=float32", calls, tmp / "hf-out", "--device", "cpu"
            ),
            "served": start_lm_eval("local-completions", served, calls, tmp / "served-out"),
        }
        scores = {name: scores_of(process, tmp / f"{name}-out") for name, process in runs.items()}
        metrics = httpx.get(server.url + "/metrics").text
    return scores, metrics


def test_lm_eval_on_the_hf_export_gives_fingpt_evaluates_bits_per_byte(lm_eval_runs, fingpt_bpb):
    scores = lm_eval_runs[0]["hf"]
    # the same windows as fingpt-evaluate's: <|endoftext|> then the call, cut every 32 tokens
    assert scores["bits_per_byte,none"] == pytest.approx(fingpt_bpb, rel=1e-5)
    assert scores["byte_perplexity,none"] == pytest.approx(2 ** scores["bits_per_byte,none"], rel=1e-9)
    assert scores["word_perplexity,none"] > scores["byte_perplexity,none"]


def test_lm_eval_via_fingpt_serve_gives_fingpt_evaluates_bpb(lm_eval_runs, fingpt_bpb):
    scores, metrics = lm_eval_runs[0]["served"], lm_eval_runs[1]
    # windows of 31 scored tokens (one prompt token is context), not 32: README, Evaluation
    assert scores["bits_per_byte,none"] == pytest.approx(fingpt_bpb, rel=0.005)
    answered = re.findall(r'fingpt_requests_total\{path="/v1/completions",status="(\d+)"\} (\S+)', metrics)
    assert [status for status, _ in answered] == ["200"] and float(answered[0][1]) > 0


def calls_module():
    """evals/calls.py as lm-eval loads it: a file beside the task's YAML, not a package."""
    spec = importlib.util.spec_from_file_location("calls", ROOT / "evals" / "calls.py")
    calls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calls)
    return calls


def test_the_task_without_a_file_of_calls_says_how_to_give_one(tmp_path):
    calls = calls_module()
    with pytest.raises(DataError, match=r"""add --metadata '\{"path": "calls.parquet"\}'"""):
        calls.load(pretrained="models/x-hf")  # lm-eval passes its model arguments along
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no calls to score"):
        calls.load(path=str(tmp_path / "empty.jsonl"))
    (tmp_path / "two.jsonl").write_text('{"content": "Operator: Hello."}\n{"content": "EPS $1.02."}\n')
    assert calls.load(path=str(tmp_path / "two.jsonl"))["test"]["text"] == ["Operator: Hello.", "EPS $1.02."]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_the_task_scores_the_very_calls_fingpt_evaluate_scores(suffix, bundle, tmp_path, monkeypatch):
    texts = ["Operator: Hello.", "EPS $1.02.", "", "Operator: Hello.", "  \n", "Revenue rose 4%."]
    path = tmp_path / f"calls{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"content": texts}), path)
    else:
        path.write_text("".join(json.dumps({"content": text}) + "\n" for text in texts))
    scored = []  # what fingpt-evaluate hands to its scorer, read by its own config

    def recording_score(model, tokenizer, texts, *args):
        texts = list(texts)
        scored.extend(texts)
        return score(model, tokenizer, texts, *args)

    monkeypatch.setattr("fingpt.evaluate.score", recording_score)
    result = evaluate(compose("evaluate", [f"model_path={bundle}", f"data.path={path}"]))
    assert result.calls == 3
    assert calls_module().load(path=str(path))["test"]["text"] == scored
    assert scored == ["Operator: Hello.", "EPS $1.02.", "Revenue rose 4%."]  # no duplicate, no empty call
