import pytest

from serving.protocol import Limits
from serving.testing import asgi_client


@pytest.fixture(scope="module")
def client(bundle):
    """The app through the ASGI test client, model loaded."""
    with asgi_client(bundle, limits=Limits(max_tokens=256, max_n=4)) as c:
        yield c


@pytest.fixture(scope="module")
def corrupt_bundle(bundle, tmp_path_factory):
    """A copy of the tiny bundle whose weights no longer match the checksum in its card."""
    import shutil

    corrupt = shutil.copytree(bundle, tmp_path_factory.mktemp("corrupt") / "tiny")
    weights = corrupt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return corrupt
