import pytest
import torch

from fingpt.devices import DTYPES, FLOATS, dtype_of, resolve_device, resolve_dtype

CUDA = torch.cuda.is_available()


def test_auto_and_none_mean_cuda_when_torch_sees_one_else_cpu():
    expected = "cuda" if CUDA else "cpu"
    assert resolve_device(None) == resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_with_the_fix(device):
    message = f"device {device} is not available here (torch sees no CUDA GPU): use device=cpu"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(device)


def test_a_gpu_index_past_the_last_is_refused():
    gpus = torch.cuda.device_count() if CUDA else 0
    with pytest.raises(ValueError, match=f"device cuda:{gpus} is not available here"):
        resolve_device(f"cuda:{gpus}")


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x"])
def test_a_device_that_is_not_one_is_refused_with_the_choices(device):
    with pytest.raises(ValueError, match=f"device {device} is not one of auto, cpu, cuda, cuda:N"):
        resolve_device(device)


def test_dtypes_auto_none_and_by_name():
    assert resolve_dtype(None, "cuda", own="float32") == "float32"  # evaluate's default: the model's own
    assert resolve_dtype("auto", "cuda:1", own="float32") == "bfloat16"  # the server's on a GPU
    assert resolve_dtype("auto", "cpu", own="float16") == "float16"
    assert [resolve_dtype(d, "cpu", own="float32") for d in DTYPES] == list(DTYPES)
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, int8, got 'int4'"):
        resolve_dtype("int4", "cpu", own="float32")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, got 'int8'"):
        resolve_dtype("int8", "cpu", own="float32", choices=FLOATS)  # what a bundle stores
    assert dtype_of(torch.nn.Linear(2, 2).to(torch.bfloat16)) == "bfloat16"
