"""Small handlers: the trainer-output wrapper, and the params a tracked run logs."""

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


def test_nested_settings_are_tracked_as_one_param_per_part():
    """The combined prior's settings (about 850 characters as one value) become one MLflow param per part, each short
    enough to be kept whole; flat settings stay as they are."""
    from cunerf_monai.forward_model import ForwardModel
    from cunerf_monai.handlers import MLFLOW_PARAM_CHARS, flat_params
    from cunerf_monai.slice_prior import describe, prior_for

    fm = ForwardModel(("box",) * 3, (2.0, 2.0, 4.0), (1, 1, 1), spacing=(2.0, 2.0, 4.0))
    prior = describe(prior_for(fm, target_spacing=[1.0, 1.0, 2.0]))
    assert len(str(prior)) > MLFLOW_PARAM_CHARS
    params = flat_params({"prior": prior, "lr": 0.1, "forward_model": {"profiles": ["box"] * 3}})
    assert set(params) == {"prior.kind", "prior.slices", "prior.cross_scale", "lr", "forward_model"}
    assert params["prior.slices"] == prior["slices"] and params["forward_model"] == {"profiles": ["box"] * 3}
    assert all(len(str(v)) <= MLFLOW_PARAM_CHARS for v in params.values())
