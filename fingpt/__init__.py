"""fingpt: a GPT trained from scratch on S&P 500 earnings calls, and served."""

__version__ = "0.1.0"
