"""Where the Hydra configs live, and composing them from Python (tests, benchmarks, tools)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def instantiate(config, **kwargs):
    """`hydra.utils.instantiate`, except that a user's mistake comes out as a ValueError the command
    lines print as one `error:` line, not wrapped in Hydra's InstantiationException: the target's
    own ValueError (a GPTConfig that does not hold together) or FileNotFoundError, and a TypeError
    (a value of the wrong type, a setting the target does not take), named by its config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        if isinstance(e.__cause__, TypeError):
            key = re.search(r"full_key: (\S+)", str(e))
            key = key[1] if key else config.get("_target_", "the config")
            target = config.get("_target_")
            raise ValueError(
                f"{key}: {target} does not take these settings ({e.__cause__}): {check(key)}"
            ) from None
        raise


def check(key: str) -> str:
    """What to check when the settings under `key` are refused: the command line's overrides of
    them, when a Hydra run has some."""
    from hydra.core.hydra_config import HydraConfig

    given = []
    if HydraConfig.initialized():
        given = [o for o in HydraConfig.get().overrides.task if re.match(rf"[+~]*{re.escape(key)}[.=]", o)]
    return f"check {' '.join(given)}" if given else f"check the {key}.* values"


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """The config the command line would build from `config_name` and these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [])
