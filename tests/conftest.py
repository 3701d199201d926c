import pytest
import torch

from helpers.models import Classifier, Preprocess, SmallCnn


@pytest.fixture
def tiny_cnn():
    """A random batch-norm CNN classifier over 5 classes, small enough for unit tests."""
    torch.manual_seed(0)
    net = SmallCnn(channels=(4, 8), num_classes=5)
    model = Classifier(net, Preprocess(None, (0.5,) * 3, (0.5,) * 3),
                       [f"c{i}" for i in range(5)], "tiny random CNN (tests)")
    # Non-trivial running statistics, so restoring them is observable.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 16, 16))
    return model.eval()


@pytest.fixture
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
