"""TrainState: where training is (epoch, step, best, stop flag, history) and its checkpoint form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    """The live state of one `fit`, handed to every callback.

    `epoch` counts completed epochs and `step` optimizer steps. Callbacks end training by
    setting `should_stop`. Everything here is plain data, so it is saved as JSON in
    checkpoints and a resumed run continues exactly where it stopped.
    """

    epoch: int = 0
    step: int = 0
    should_stop: bool = False
    stop_reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_loss: float | None = None
    """Mean training loss of the last completed epoch."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
