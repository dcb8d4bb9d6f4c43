"""params.yaml, validated on load into typed records.

Read as DVC reads it (ruamel.yaml, YAML 1.2), so ``lr: 1e-3`` is the float a
user means, to DVC and to us alike. Unknown keys, missing keys, wrong types and
out-of-range values fail with the file, the dotted key, the value and what was
expected.
"""

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from lossbench.configuration import MODES, PRECISIONS
from lossbench.errors import UserError, run, shown
from lossbench.registry import REGISTRY, USER_LOSS

# A device is a torch device kind. Which machine ran it is not part of its name: each machine's
# results live in its own directory, results/<machine>/ (lossbench.machines).
DEVICES = ("cpu", "cuda")
MNIST_TRAIN_IMAGES = 60_000  # the task's training set (stages/download.py verifies its files by digest)


def _device(v):
    if v not in DEVICES:
        hint = ("; a machine is named by LOSSBENCH_MACHINE now, not in the device (README: Many machines)"
                if isinstance(v, str) and v.startswith(tuple(f"{d}-" for d in DEVICES)) else "")
        raise ValueError(f"expected {' or '.join(map(repr, DEVICES))}{hint}")
    return v


Device = Annotated[str, AfterValidator(_device)]
Expectation = Literal["equal", "differs"]
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
FN_HELP = "a registered loss or 'package.module:attr'"


class Strict(BaseModel):
    # strict: a YAML string is never silently a number; extra: typos are errors
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _fn(v):
    if v in REGISTRY or USER_LOSS.match(v):
        return v
    raise ValueError(f"unknown loss {v!r}: expected {FN_HELP}; registered: {sorted(REGISTRY)}")


def _unique(v):
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate entries {dupes}")
    return v


class Train(Strict):
    seed: Annotated[int, Field(ge=0)]
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    losses: Annotated[list[str], Field(min_length=1)]
    devices: Annotated[list[Device], Field(min_length=1)]
    precisions: Annotated[list[Literal[PRECISIONS]], Field(min_length=1)]  # fp32: the tutorial's; bf16: autocast
    modes: Annotated[list[Literal[MODES]], Field(min_length=1)]
    loader: Literal["preloaded", "dataloader"]
    repeats: PosInt
    warmup_steps: Annotated[int, Field(ge=0)]

    @field_validator("losses", "devices", "precisions", "modes")
    @classmethod
    def _no_duplicates(cls, v):
        return _unique(v)


class LossDef(Strict):
    """One entry of the ``losses`` section: what to call, with which args, judged against what."""

    fn: str
    args: dict[str, Any] = {}
    reference: str | None = None  # default: report.reference; none for a reference (named by another loss, or torch_*)
    expect: Expectation | None = None  # default: the registered loss's, else equal

    @field_validator("fn")
    @classmethod
    def _known_fn(cls, v):
        return _fn(v)


class Tolerance(Strict):
    # a step passes when |loss - ref| <= atol + rtol * |ref|
    atol: NonNegFloat
    rtol: NonNegFloat


class Gradient(Strict):
    # a parameter's step-1 gradient passes when max |g - g_ref| <= rtol * max |g_ref|
    rtol: NonNegFloat


class Envelope(Strict):
    # the reference's own rounding noise: its run repeated `members` times, every initial weight nudged
    # by one ulp; a candidate is equal while |diff| <= multiplier x noise (docs/envelope.md)
    members: PosInt
    floor_ulps: PosFloat  # the noise at a step is at least this many ulps of the reference's loss there
    gradient_floor_ulps: PosFloat  # a parameter's step-1 gradient noise: at least this many ulps of its max
    multiplier: PosFloat


class Report(Strict):
    reference: str
    rule: Literal["envelope", "fixed"]  # envelope: the measured noise; fixed: same_device and gradient below
    envelope: Envelope
    same_device: Tolerance
    cross_device: Tolerance
    gradient: Gradient


class Cost(Strict):
    # every loss of a device timed in turn, in one process: lossbench.timing
    rounds: Annotated[int, Field(ge=2)]  # the interval needs at least two
    steps: PosInt  # timed steps per loss per round
    warmup_steps: Annotated[int, Field(ge=0)]  # untimed steps per loss before the first round
    min_effect: Annotated[float, Field(ge=1)]  # a ratio is a difference only beyond this factor


class Compare(Strict):
    # B/A median step time beyond this factor (either way) counts as a cost change
    cost_factor: Annotated[float, Field(gt=1)]


class Judged(BaseModel):
    """How the report judges one loss: against which reference, expecting what."""

    model_config = ConfigDict(frozen=True)
    name: str
    fn: str
    args: dict
    reference: str | None  # None: this loss is a reference, compared with nothing
    expect: Expectation


class Params(Strict):
    train: Train
    losses: dict[str, LossDef]
    report: Report
    cost: Cost
    compare: Compare

    @field_validator("losses")
    @classmethod
    def _names(cls, v):
        for name in v:
            if name in REGISTRY:
                raise ValueError(f"{name!r} is a registered loss: give your definition another name")
            if not USER_LOSS.match(f"x:{name}"):
                raise ValueError(f"{name!r}: a name is letters, digits and '_', starting with a letter")
        return v

    @model_validator(mode="after")
    def _a_run_has_steps_to_time(self):
        t, n = self.train, MNIST_TRAIN_IMAGES
        if t.batch_size > n:
            raise ValueError(f"train.batch_size: {t.batch_size} is more than the task's {n} training images: "
                             f"at most {n}")
        steps = t.epochs * -(-n // t.batch_size)
        if t.warmup_steps >= steps:
            raise ValueError(f"train.warmup_steps: {t.warmup_steps} leaves no step to time: a run has {steps} steps "
                             f"(train.epochs {t.epochs} x {-(-n // t.batch_size)} batches of train.batch_size "
                             f"{t.batch_size}): lower train.warmup_steps, or raise train.epochs")
        return self

    @model_validator(mode="after")
    def _every_loss_resolves(self):
        for name in self.train.losses:
            if name not in self.losses and name not in REGISTRY and not USER_LOSS.match(name):
                known = sorted({*REGISTRY, *self.losses})
                near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
                raise ValueError(f"train.losses: unknown loss {name!r}: " + (
                    f"did you mean {near[0]!r}?" if near else
                    f"expected {FN_HELP}, or a name defined under losses: (registered: {sorted(REGISTRY)}; "
                    f"defined: {sorted(self.losses)})"))
        for name, d in self.losses.items():  # defined, trained or not: a typo is caught now
            if d.reference and not (d.reference in self.losses or d.reference in REGISTRY
                                    or d.reference in self.train.losses):
                raise ValueError(f"losses.{name}.reference: unknown loss {d.reference!r}: expected a registered "
                                 f"loss, a name defined under losses: or one in train.losses")
        for name, j in self.plan().items():
            if j.reference is not None and j.reference not in self.train.losses:
                own = name in self.losses and self.losses[name].reference
                why = f"losses.{name}.reference" if own else "report.reference"
                raise ValueError(f"train.losses: {name!r} is compared with {j.reference!r} ({why}), which is "
                                 f"not in train.losses {self.train.losses}: add it")
        return self

    def plan(self):
        """Every loss of the run, judged: its fn, args, reference and expectation."""
        defs = {n: self.losses.get(n) or LossDef(fn=n) for n in self.train.losses}
        referenced = {d.reference for d in defs.values() if d.reference}
        out = {}
        for name, d in defs.items():
            reg = REGISTRY.get(d.fn)
            ref = d.reference
            # torch's own loss, however named (torch.nn.functional:l1_loss), is a reference: judging it against
            # report.reference (an MSE) is almost never what its user wants
            torch_own = d.fn.split(".")[0].split(":")[0] == "torch" and ":" in d.fn
            is_reference = name in referenced or name == self.report.reference or (reg and reg.reference) or torch_own
            if ref is None and not is_reference:
                ref = self.report.reference
            out[name] = Judged(name=name, fn=d.fn, args=d.args, reference=ref if ref != name else None,
                               expect=d.expect or (reg.expect if reg else "equal"))
        return out


def _short(value, width=60):
    text = repr(value)
    close = {"{": "}", "[": "]", "(": ")"}.get(text[:1], "")  # a cut list still reads as a list
    return text if len(text) <= width else text[: width - 5] + " ..." + close


class ParamsError(UserError):
    pass


def parse_params(data, source="params.yaml"):
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        missing = {tuple(err["loc"]) for err in errors if err["type"] == "missing"}
        parts, meant = [], set()
        for err in errors:
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            got = "" if err["type"] in ("missing", "extra_forbidden") or not loc else f" (got {_short(err['input'])})"
            msg = err["msg"].removeprefix("Value error, ")
            msg = "expected " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ") else msg
            if err["type"] == "missing":
                msg = "required, and missing"
            elif err["type"] == "extra_forbidden":  # a typo, most often: the nearest key it could be
                near = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1, cutoff=0.8)
                msg = "unknown key" + (f": did you mean {near[0]!r}?" if near else "")
                meant |= {loc[:-1] + (near[0],)} & missing if near else set()
            parts.append((loc, f"{key}: {msg}{got}" if loc else msg))
        # a misspelt key explains its missing one: said once
        raise ParamsError(f"{source}: " + "; ".join(text for loc, text in parts if loc not in meant)) from None


def _known_keys(loc):
    """The keys params.yaml may hold at ``loc`` (a mapping's own names, like a loss's, are skipped through)."""
    model = Params
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return []
            model = field.annotation
        elif get_origin(model) is dict:  # losses: {name: LossDef}
            model = get_args(model)[1]
        else:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def load_params(path="params.yaml"):
    path, name = Path(path), shown(path)  # stages run in results/<machine>/: ../../params.yaml is params.yaml
    try:
        data = YAML(typ="safe").load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{name}: file not found") from None
    except YAMLError as e:
        raise ParamsError(f"{name}: not valid YAML ({' '.join(str(e).split())})") from None
    return parse_params(data, source=name)


def main(argv=None):
    """``python -m lossbench.config [params.yaml]``: validate, before DVC reads the file (``make repro``).

    DVC itself fails on a params.yaml its dvc.yaml cannot expand (``train.losses`` missing, ``devices: cpu``),
    with messages that name neither key nor fix; this says which key, in one line.
    """
    argv = sys.argv[1:] if argv is None else argv
    run(lambda: load_params(argv[0] if argv else "params.yaml"), "params")


if __name__ == "__main__":
    main()
