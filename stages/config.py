"""params.yaml, validated on load into typed records.

Unknown keys, missing keys, wrong types and out-of-range values fail loudly
with the file, the dotted key, the value and what was expected.
"""

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.losses import REGISTRY, check_loss_name

Device = Literal["cpu", "cuda"]
Expectation = Literal["equal", "differs"]
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    # strict: a YAML string "1e-3" is not silently a float; extra: typos are errors
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Train(Strict):
    seed: Annotated[int, Field(ge=0)]
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    losses: Annotated[list[str], Field(min_length=1)]
    devices: Annotated[list[Device], Field(min_length=1)]
    loader: Literal["preloaded", "dataloader"]
    repeats: PosInt
    warmup_steps: Annotated[int, Field(ge=0)]
    profile_steps: PosInt

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v):
        for name in v:
            check_loss_name(name)
        return _unique(v)

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v):
        return _unique(v)


class Tolerance(Strict):
    # a step passes when |loss - ref| <= atol + rtol * |ref|
    atol: NonNegFloat
    rtol: NonNegFloat


class Report(Strict):
    reference: str
    expect: dict[str, Expectation]
    same_device: Tolerance
    cross_device: Tolerance


class Compare(Strict):
    # B/A median step time beyond this factor (either way) counts as a cost change
    cost_factor: Annotated[float, Field(gt=1)]


class Params(Strict):
    train: Train
    report: Report
    compare: Compare

    @field_validator("report")
    @classmethod
    def _names_in_train(cls, v, info):
        train = info.data.get("train")
        if train is None:
            return v
        if v.reference not in train.losses:
            raise ValueError(f"reference {v.reference!r} is not in train.losses {train.losses}")
        for name in v.expect:  # a registered loss may be left out of a run; a typo may not
            if name not in train.losses and name not in REGISTRY:
                raise ValueError(f"expect names {name!r}, which is neither in train.losses "
                                 f"{train.losses} nor a registered loss {sorted(REGISTRY)}")
        return v


def _unique(v):
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate entries {dupes}")
    return v


class ParamsError(ValueError):
    pass


def parse_params(data, source="params.yaml"):
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
            lines.append(f"  {key}: {err['msg']}{got}")
        raise ParamsError(f"{source}: invalid params:\n" + "\n".join(lines)) from None


def load_params(path="params.yaml"):
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    return parse_params(data, source=str(path))
