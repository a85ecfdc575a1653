"""The HParams plugin's protos for one trial's session, without TensorFlow.

No experiment summary is written. TensorBoard shows one experiment per logdir and, when several
runs hold one, takes whichever it finds first: with two studies under ``logs/`` one study's
columns would hide the other's. Without one, TensorBoard builds the columns from the sessions
themselves: the union of every study's parameters (empty where a study has none), each numeric
filter bounded by the values seen, each string column (study, state, categorical choices) a
set of boxes to tick, and one metric column per scalar tag in the session runs, which hold only
``objective/<metric>``. What that costs: no "(log)" in a column's name and no descriptions
(the README says which parameters are log), and integers show as floats (the protocol has no
integer type).

Each session's group name is left empty, so TensorBoard groups by the run's path, which is
unique in the logdir: trial 0 of two studies are two rows, never one averaged row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.text import metadata as text_metadata

from torchtune_hp.space import Categorical, Fixed, Space
from torchtune_hp.trial import TrialState

# PRUNED ran fine and was stopped on purpose: SUCCESS; the state column tells it apart.
STATUS = {
    TrialState.COMPLETE: api_pb2.Status.STATUS_SUCCESS,
    TrialState.PRUNED: api_pb2.Status.STATUS_SUCCESS,
    TrialState.FAILED: api_pb2.Status.STATUS_FAILURE,
    TrialState.RUNNING: api_pb2.Status.STATUS_RUNNING,
}


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=tag,
                metadata=metadata.create_summary_metadata(data),
                tensor=metadata.NULL_TENSOR,
            )
        ]
    )


def _as_strings(values: list[Any]) -> bool:
    """A categorical is shown as strings unless its choices are all bools or all numbers."""
    if all(isinstance(v, bool) for v in values):
        return False
    return not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _proto_value(value: Any, as_string: bool) -> struct_pb2.Value:
    if as_string:
        return struct_pb2.Value(string_value=str(value))
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    return struct_pb2.Value(number_value=float(value))


STUDY_COLUMN, STATE_COLUMN = "study", "state"


def column_name(param: str) -> str:
    """A parameter's column: its name, except that parameters named like the study and state
    columns become ``state (parameter)``; the rule depends on the name alone, so the columns
    mean the same for every study in a logdir."""
    return f"{param} (parameter)" if param in (STUDY_COLUMN, STATE_COLUMN) else param


def session_start_summary(
    space: Space, params: Mapping[str, Any], study: str, state: TrialState
) -> summary_pb2.Summary:
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in params.items():
        p = space.params.get(name)
        if isinstance(p, Categorical):
            as_string = _as_strings(list(p.choices))
        elif isinstance(p, Fixed):
            as_string = _as_strings([p.value])
        else:
            as_string = p is None and _as_strings([value])
        info.hparams[column_name(name)].CopyFrom(_proto_value(value, as_string))
    info.hparams[STUDY_COLUMN].CopyFrom(struct_pb2.Value(string_value=study))
    info.hparams[STATE_COLUMN].CopyFrom(struct_pb2.Value(string_value=state.value))
    return _summary(
        metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info)
    )


def session_end_summary(state: TrialState) -> summary_pb2.Summary:
    info = plugin_data_pb2.SessionEndInfo(status=STATUS[state], end_time_secs=time.time())
    return _summary(
        metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info)
    )


def text_summary(tag: str, markdown: str, description: str = "") -> summary_pb2.Summary:
    """A text summary (TensorBoard's Text tab renders it as Markdown)."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=[markdown.encode("utf-8", "replace")],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
    )
    meta = text_metadata.create_summary_metadata(display_name=tag, description=description)
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)]
    )
