import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Drawn CNNs are built and run in torch: slower than hypothesis' default 200 ms deadline on 2 cores.
settings.register_profile("hwopt", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hwopt"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
