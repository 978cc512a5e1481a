"""Errors dlpipe raises on purpose. The CLI prints these without a traceback and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class DlpipeError(Exception):
    """Base of every error raised on purpose: a message a user can act on."""


class ConfigError(DlpipeError, ValueError):
    """The configuration is wrong. Carries every problem found, each with its dotted path."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            path, message = self.problems[0]
            text = f"{path}: {message}" if path else message
        else:
            lines = "\n".join(f"  {p}: {m}" if p else f"  {m}" for p, m in self.problems)
            text = f"invalid config ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)

    @classmethod
    def unknown(cls, kind: str, name: str, choices: Iterable[str], path: str = "") -> ConfigError:
        """An unknown registry name, with the closest known names suggested."""
        return cls([(path, f"unknown {kind} {name!r}. {suggest(name, choices)}")])


class DataError(DlpipeError, ValueError):
    """The data do not match the config: a missing column, a NaN target, an unseen category."""


class RunDirError(DlpipeError, FileNotFoundError):
    """A stage needs a file an earlier stage writes, or the folder is not a run directory."""


class TrainingError(DlpipeError, RuntimeError):
    """Training cannot go on: a non-finite loss, a callback that failed."""


class ExportError(DlpipeError, ValueError):
    """A model cannot be exported or compressed as asked, or a bundle fails its checks:
    ONNX outputs that differ from PyTorch's (naming the layer), a tampered bundle file."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return 'Did you mean X? Known: a, b, c' for a misspelled `name`."""
    known = sorted(choices)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return f"{hint}Known: {', '.join(known)}"
