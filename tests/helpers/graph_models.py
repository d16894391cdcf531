"""Three models whose graphs the tests draw: a Sequential, a custom Module with a skip connection,
and a model of two inputs."""
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x):
        return x + torch.relu(self.norm(self.fc(x)))


class SkipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Residual(), Residual())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.table = nn.Linear(5, 6)
        self.head = nn.Linear(4 * 6 * 6 + 6, 2)

    def forward(self, image, table):
        return self.head(torch.cat([self.image(image), self.table(table)], dim=1))


def models_and_inputs():
    torch.manual_seed(0)
    return [("sequential", nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)),
             (torch.randn(8, 4),)),
            ("skip", SkipNet(), (torch.randn(8, 4),)),
            ("two_inputs", TwoInputs(), (torch.randn(8, 1, 8, 8), torch.randn(8, 5)))]
