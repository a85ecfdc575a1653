"""The HParams plugin's protos, built from a study's space, without TensorFlow.

The experiment (one column per hyperparameter with its domain, and the metric columns) is
written once, in the study-level run; each trial's run holds its session: the parameters when it
starts, the metric values as they arrive, the status when it ends. TensorBoard takes a tag's
metadata from its first event only, so nothing here is ever rewritten: a session's state is its
end status plus the ``trial/pruned`` metric, both written when the trial ends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from torchtune_hp.board.tags import PRUNED_TAG, objective_tag
from torchtune_hp.space import Categorical, Fixed, Float, Int, Param, Space
from torchtune_hp.trial import TrialState

# A PRUNED trial ran fine and was stopped on purpose: SUCCESS, with trial/pruned = 1.
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


def _kind(values: list[Any]) -> int:
    if all(isinstance(v, bool) for v in values):
        return api_pb2.DataType.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DataType.DATA_TYPE_FLOAT64
    return api_pb2.DataType.DATA_TYPE_STRING


def _proto_value(value: Any, kind: int) -> struct_pb2.Value:
    if kind == api_pb2.DataType.DATA_TYPE_BOOL:
        return struct_pb2.Value(bool_value=bool(value))
    if kind == api_pb2.DataType.DATA_TYPE_FLOAT64:
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def column_kinds(space: Space) -> dict[str, int]:
    """Each parameter's column type: a mixed categorical (``[relu, 1]``) is shown as strings."""
    kinds: dict[str, int] = {}
    for name, p in space.params.items():
        if isinstance(p, Categorical):
            kinds[name] = _kind(list(p.choices))
        elif isinstance(p, Fixed):
            kinds[name] = _kind([p.value])
        else:
            kinds[name] = api_pb2.DataType.DATA_TYPE_FLOAT64
    return kinds


def _hparam_info(name: str, p: Param, kind: int) -> api_pb2.HParamInfo:
    info = api_pb2.HParamInfo(name=name, type=kind)
    if isinstance(p, (Float, Int)):
        info.domain_interval.min_value = float(p.low)
        info.domain_interval.max_value = float(p.high)
        if p.log:  # the proto has no log domain: say it where the column header shows it
            info.display_name = f"{name} (log)"
            info.description = f"log-uniform on [{p.low}, {p.high}]"
    else:
        values = list(p.choices) if isinstance(p, Categorical) else [p.value]
        info.domain_discrete.values.extend(_proto_value(v, kind) for v in values)
    return info


def experiment_summary(
    space: Space, metric: str, mode: str, description: str = ""
) -> summary_pb2.Summary:
    kinds = column_kinds(space)
    experiment = api_pb2.Experiment(
        description=description,
        time_created_secs=time.time(),
        hparam_infos=[_hparam_info(n, p, kinds[n]) for n, p in space.params.items()],
        metric_infos=[
            api_pb2.MetricInfo(
                name=api_pb2.MetricName(tag=objective_tag(metric)),
                display_name=metric,
                description=f"the trial's objective ({'lower' if mode == 'min' else 'higher'} "
                "is better)",
            ),
            api_pb2.MetricInfo(
                name=api_pb2.MetricName(tag=PRUNED_TAG),
                display_name="pruned",
                description="1 when the pruner stopped the trial early",
            ),
        ],
    )
    return _summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
    )


def session_start_summary(
    space: Space, params: Mapping[str, Any], group: str
) -> summary_pb2.Summary:
    """``group`` names the session's row; one per trial, so retried parameters get two rows."""
    kinds = column_kinds(space)
    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for name, value in params.items():
        info.hparams[name].CopyFrom(_proto_value(value, kinds.get(name, _kind([value]))))
    return _summary(
        metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info)
    )


def session_end_summary(state: TrialState) -> summary_pb2.Summary:
    info = plugin_data_pb2.SessionEndInfo(status=STATUS[state], end_time_secs=time.time())
    return _summary(
        metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info)
    )
