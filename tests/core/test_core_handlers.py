"""Small handlers: the trainer-output wrapper."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from cunerf_monai.handlers import OutputAsList


def test_output_as_list_lets_from_engine_read_the_loss():
    loss = torch.tensor(0.25)
    engine = Engine(lambda e, b: {"loss": loss, "pred": torch.zeros(100_000)})
    OutputAsList().attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(from_engine(["loss"], first=True)(e.state.output)))
    engine.run([0, 1], max_epochs=1)
    assert len(seen) == 2 and all(v is loss for v in seen)
    assert isinstance(engine.state.output, list) and len(engine.state.output) == 1
    assert engine.state.output[0]["pred"].shape == (100_000,)  # nothing decollated or copied
