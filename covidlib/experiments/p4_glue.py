"""Numbers the P4 chapters' prose cites, glued rather than typed.

P4's values come from ``covidlib/report/paper_values/p4.yaml``: Table 1's stated total of
trainable parameters (``P4-T1``) and the training protocol of P4 Sec. 4 (``P4-T2``'s
``protocol``); the lambda of RGS+AL from :data:`covidlib.reweight.MODES` and Table 1's
input from :data:`covidlib.models.resunet3d.P4_INPUT_SHAPE`.
"""

from __future__ import annotations

from typing import Any

from covidlib.models.resunet3d import P4_INPUT_SHAPE
from covidlib.report import paper_values
from covidlib.reweight import MODES

__all__ = ["prose_values"]


def prose_values() -> dict[str, str]:
    """Glue values (name -> text): ``p4_trainable_parameters`` (Table 1's total, with
    thousands separators, e.g. "4,806,481"), and from P4 Sec. 4 ``p4_paper_epochs`` (epochs
    per network), ``p4_paper_batch`` (C_p = C_v) and ``p4_paper_lambda`` (Eq. 8's mix), and
    ``p4_rgs_al_lambda``: Eq. 8's lambda of the RGS+AL student (``MODES["rgs_al"]``), and
    ``p4_input_size``: the side of Table 1's cubic input (``"96³"``)."""
    side = set(P4_INPUT_SHAPE[2:])
    if len(side) != 1:
        raise ValueError(f"P4_INPUT_SHAPE {P4_INPUT_SHAPE}: expected a cubic input")
    total: Any = paper_values.artifact("P4-T1").get("total")
    protocol: Any = paper_values.artifact("P4-T2").get("protocol")
    if not isinstance(total, int):
        raise ValueError(f"p4.yaml: P4-T1.total {total!r} is not an integer count")
    if not isinstance(protocol, dict) or not isinstance(protocol.get("epochs"), int):
        raise ValueError(f"p4.yaml: P4-T2.protocol {protocol!r} has no integer 'epochs'")
    return {"p4_trainable_parameters": f"{total:,}",
            "p4_paper_epochs": str(protocol["epochs"]),
            "p4_paper_batch": str(protocol["batch"]),
            "p4_paper_lambda": f"{protocol['mix_lambda']:g}",
            "p4_rgs_al_lambda": f"{MODES['rgs_al'][0]:g}",
            "p4_input_size": f"{side.pop()}³"}
