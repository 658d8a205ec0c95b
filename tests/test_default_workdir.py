"""train.py's default workdir names a DCASE year that is not the config's.

Runs of two years must never share a workdir.
"""

import pytest

from aeasd_jax import runtime
from configs import dcase2023
from configs import idnn


@pytest.mark.parametrize(
  "module,path,year,expected",
  [
    (dcase2023, "configs/dcase2023.py", 2024, "runs/dcase2023_2024"),
    (dcase2023, "configs/dcase2023.py", 2023, "runs/dcase2023"),
    (idnn, "configs/idnn.py", None, "runs/idnn"),
    (idnn, "configs/idnn.py", 2020, "runs/idnn_2020"),
  ],
)
def test_default_workdir(module, path, year, expected):
  config = module.get_config()
  config.data.dcase_year = year
  assert runtime.default_workdir(config, path) == expected
