"""Where the Hydra configs live, and composing them from Python (tests, benchmarks, tools)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def instantiate(config, **kwargs):
    """`hydra.utils.instantiate`, except that a user's mistake the target raises (a ValueError, such
    as a GPTConfig that does not hold together, or a missing file) comes out as itself, not wrapped
    in Hydra's InstantiationException: the command lines then print it as one `error:` line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """The config the command line would build from `config_name` and these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [])
