"""The evaluation tests score signals of a few seconds, on which torch's thread pool only costs time
(most of all on a shared machine): one thread while they run, the setting restored afterwards."""
import pytest


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
