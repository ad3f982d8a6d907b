"""What every entry point shares: argparse errors as one ``error:`` line, exit 2, and the test PYTHONPATH."""

from __future__ import annotations

import argparse

from pcl.utils.errors import PCLError


class ErrorParser(argparse.ArgumentParser):
    """argparse whose errors become one-line ``PCLError``s instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PCLError(message)
