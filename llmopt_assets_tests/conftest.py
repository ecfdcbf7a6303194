import pytest
import torch

from llmopt_assets_tests.tiny_models import ARCHITECTURES, tiny_model


@pytest.fixture(autouse=True, scope="session")
def _deterministic_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(arch: str):
    return tiny_model(arch)
