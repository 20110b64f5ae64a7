"""Typed experiment configuration: dataclasses with the paper's defaults, YAML loading, overrides.

One :class:`ExperimentConfig` describes a whole run, CNT stage 1 and stage 2 included. The
defaults are the paper's (Sec. V-A): SGD with momentum 0.9 and weight decay 5e-4, batch 8,
L1 loss, warm-up + cosine from 1e-3 to 5e-6 with 120 warm-up epochs, 500 epochs, τ annealed
linearly from 30 to 1 over the first 30 epochs, SepBN with K = 3 sets, G = 2 groups, T = 3.

YAML files map one to one onto the dataclasses::

    base: ../base/wflw.yaml        # optional: inherit another file (path relative to this one)
    name: wflw_sepbn
    model: {arch: vanilla_cnn, norm: sepbn}
    optim: {lr: 1.0e-3, epochs: 500}
    data:
      train: [{kind: wflw, path: $SEPBN_DATA/WFLW, split: train}]
      val: {kind: wflw, path: $SEPBN_DATA/WFLW, split: test}
    finetune: {targets: [wflw]}    # CNT stage 2; omit for a single-stage run

``base`` may also be a list of files, merged in order. Mappings are merged key by key (deep
merge); lists and scalars replace the inherited value. Every problem (an unknown key, a value of
the wrong type or out of range, a field that does not apply to the chosen norm layer or
architecture) raises a :class:`ConfigError` naming the file and line, the key path and the valid
choices, so a typo fails before any data is read. Every field can be
overridden from the command line with ``--set section.field=value``; the value is parsed with
``yaml.safe_load`` (so ``--set optim.lr=0.01``, ``--set data.val=null`` and
``--set model.sepbn_blocks=[1,2]`` work; list items are addressed by index,
``--set data.train.0.path=/data/wflw``) and checked against the field's annotation.

The package, one step per module:

- :mod:`~sepbn.config.schema`: the dataclasses, one per section, with their defaults and checks;
- :mod:`~sepbn.config.fields`: the arch and norm choices, which model fields each one uses,
  and the errors for a field that does not apply;
- :mod:`~sepbn.config.conversion`: plain mappings to dataclasses (every value checked against
  its annotation) and back;
- :mod:`~sepbn.config.yaml_reader`: YAML read strictly (UTF-8, no duplicate key, no alias
  bomb), every error one line with the file and line;
- :mod:`~sepbn.config.loading`: YAML files, ``base:`` inheritance, the file and line of each key,
  and :func:`config_from_dict` for a mapping already read;
- :mod:`~sepbn.config.overrides`: ``--set`` overrides;
- :mod:`~sepbn.config.legacy`: configs from checkpoints of an older sepbn;
- :mod:`~sepbn.config.messages`: how the errors name keys and suggest choices.
"""

from sepbn.config.conversion import to_dict
from sepbn.config.fields import ARCH_FIELDS, NORM_FIELDS, Arch, Norm, SepbnPosition
from sepbn.config.legacy import upgrade_legacy_config
from sepbn.config.loading import config_from_dict, deep_merge, load_config, save_config
from sepbn.config.overrides import apply_overrides
from sepbn.config.schema import (
    DataConfig,
    DatasetConfig,
    ExperimentConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    TemperatureConfig,
    TrainConfig,
)
from sepbn.errors import ConfigError

__all__ = [
    "ARCH_FIELDS",
    "NORM_FIELDS",
    "Arch",
    "ConfigError",
    "DataConfig",
    "DatasetConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ModelConfig",
    "Norm",
    "OptimConfig",
    "SepbnPosition",
    "TemperatureConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "save_config",
    "to_dict",
    "upgrade_legacy_config",
]
