"""The shipped losses by name: where each lives and how the report judges it. No torch here.

Each entry names its object the way a user names theirs (``package.module:attr``),
and is built by the same rules (lossbench.losses): a class is constructed with
``args``, an ``autograd.Function`` is its ``.apply``, a function is the loss.
Reading params, the report and ``make compare`` need the names, not torch (~3 s to import).
"""

import re
from dataclasses import dataclass

USER_LOSS = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:attr


@dataclass(frozen=True)
class Registered:
    target: str  # package.module:attr
    expect: str = "equal"  # what the report expects against its reference
    updates_weights: bool = True  # False only for a detached negative control
    reference: bool = False  # a reference: judged against nothing unless given one


REGISTRY: dict[str, Registered] = {
    # references: torch's own reconstruction losses that fit a sigmoid output and targets in [0, 1]
    "torch_mse": Registered("torch.nn:MSELoss", reference=True),
    "torch_l1": Registered("torch.nn:L1Loss", reference=True),
    "torch_smooth_l1": Registered("torch.nn:SmoothL1Loss", reference=True),
    "torch_huber": Registered("torch.nn:HuberLoss", reference=True),
    "torch_bce": Registered("torch.nn:BCELoss", reference=True),
    # candidates, and the negative controls that prove the checks can fail
    "functional_mse": Registered("torch.nn.functional:mse_loss"),
    "module_mse": Registered("lossbench.losses:ModuleMSE"),
    "numpy_mse": Registered("lossbench.losses:NumpyMSE"),
    "wrong_backward": Registered("lossbench.losses:WrongBackward", expect="differs"),
    "numpy_detached": Registered("lossbench.losses:numpy_detached", expect="differs", updates_weights=False),
}
